"""The agent's netlink adapter: the only package that imports pyroute2.

`routes` batches route messages over a raw rtnetlink socket, `probing` finds what the
kernel can do, `vrfrealizing` turns a planned VRF into devices, namespaces, addresses,
rules and routes, and `cgroups` gives a VRF's context its CPU/memory limits.
"""
