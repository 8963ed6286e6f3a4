"""VRF planning on a node: pure functions from VRF specs to the state a node should hold.

Nothing here touches the kernel. `specs` holds the input/output shapes (TypedDicts with the
CRD's camelCase keys), `planning` turns a spec into a `DesiredVRF` for one node, allocates
routing tables and refuses conflicting specs with a reason and a sentence. The netlink
adapter in `kubevisor.agent.netlink` realizes a `DesiredVRF`.
"""
