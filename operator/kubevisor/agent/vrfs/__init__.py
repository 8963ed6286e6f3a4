"""VRF planning on a node: pure functions from accepted VRFs to the state a node holds.

`handling` is the loop (the shared runtime's informer and work loop over every VRF) and
the only module here that reaches the kernel or the API. `selecting` picks the VRFs the
controller accepted for this node (parsed with the API model, with the table the
controller assigned) and builds the node's status entry; `planning` turns each into a
`DesiredVRF` and refuses only what this node's kernel cannot build; `specs` holds the
read-back shapes. The kernel adapter in `kubevisor.agent.kernel` realizes a `DesiredVRF`.
"""
