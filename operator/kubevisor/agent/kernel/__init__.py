"""The agent's kernel adapters: the only agent package that imports pyroute2.

`bridges` creates and prunes the bridges of network segments (what a segment is, and
which to prune, is pure: :mod:`kubevisor.agent.segments`).
"""
