"""The agent's kernel adapters: the only agent package that imports pyroute2.

`bridges` creates and prunes the bridges of network segments (what a segment is, and
which to prune, is pure: :mod:`kubevisor.agent.segments`); `routes` batches route
messages over a raw rtnetlink socket (and diffs owned routes); `linking` keeps links,
addresses and rules of a VRF as planned; `probing` finds what the kernel can do;
`vrfrealizing` turns a planned VRF into devices, namespaces, addresses, rules and
routes, with its pure halves apart: `vrfnaming` (where a VRF's pieces live, the aliases
that mark them ours) and `vrfconverging` (the routes to install, when a read-back counts
as realized); `cgroups` gives a VRF's context its CPU/memory limits.
"""
