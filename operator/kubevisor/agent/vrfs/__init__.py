"""The agent's VRF side: `handling` is the loop (the shared runtime's informer and work
loop over every VRF); the rest is planning, pure functions from VRF specs to the state a
node should hold.

Nothing but `handling` touches the kernel or the API. `specs` holds the input/output
shapes (TypedDicts with the CRD's camelCase keys), `planning` turns a spec into a
`DesiredVRF` for one node, allocates routing tables and refuses conflicting specs with a
reason and a sentence. The netlink adapter in `kubevisor.agent.kernel` realizes a
`DesiredVRF`.
"""
