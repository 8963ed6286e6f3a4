"""VRF planning on a node: pure functions from accepted VRFs to the state a node holds.

Nothing here touches the kernel. `selecting` picks the VRFs the controller accepted for
this node (parsed with the API model, with the table the controller assigned) and builds
the node's status entry; `planning` turns each into a `DesiredVRF` and refuses only what
this node's kernel cannot build; `specs` holds the read-back shapes. The netlink adapter
in `kubevisor.agent.netlink` realizes a `DesiredVRF`.
"""
