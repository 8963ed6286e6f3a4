"""Where a VRF's pieces live on a node and how the kernel marks them ours; pure, no netlink.

Names are derived from the VRF's name (and the realizer's prefix), never stored, so a
restarted agent finds what it made by computing the same names. Ownership marks are
interface aliases: a restarted agent reads them back from the kernel to tell its own
links (segment veths, moved host interfaces, l3mdev devices) from anything else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

#: VRF side of a segment veth: ``kubevisor:seg:<vrf>/<iface>``.
ALIAS_SEGMENT = "kubevisor:seg:"
#: Node side of a segment veth (on the segment bridge): ``kubevisor:segnode:<vrf>/<iface>``.
ALIAS_NODE_SIDE = "kubevisor:segnode:"
#: A host interface moved into a VRF namespace: ``kubevisor:host:<original name>``.
ALIAS_HOST = "kubevisor:host:"
#: The l3mdev device of a vrf-backend VRF: ``kubevisor:vrf:<vrf>``.
ALIAS_VRF = "kubevisor:vrf:"


def segment_alias(vrf: str, iface: str) -> str:
    """Alias of the VRF side of a segment veth."""
    return f"{ALIAS_SEGMENT}{vrf}/{iface}"


def node_side_alias(vrf: str, iface: str) -> str:
    """Alias of the node side of a segment veth."""
    return f"{ALIAS_NODE_SIDE}{vrf}/{iface}"


def host_alias(host: str) -> str:
    """Alias of a host interface moved into a VRF namespace (keeps its original name)."""
    return f"{ALIAS_HOST}{host}"


@dataclass(frozen=True)
class Naming:
    """Where a VRF's pieces live on this node; derived, never stored."""

    node_netns: str | None
    netns_prefix: str
    cgroup_parent: str
    run_root: str = "/run/kubevisor"

    def run_dir(self, vrf: str) -> str:
        """Directory of the VRF's routing daemon (config, control socket, pid file):
        named like its namespace, so two simulated nodes on one machine never share one."""
        return f"{self.run_root}/{self.vrf_netns(vrf)}"

    def vrf_netns(self, vrf: str) -> str:
        """Namespace of a netns-backend VRF."""
        return f"{self.netns_prefix}{vrf}"

    def node_ifname(self, vrf: str, iface: str) -> str:
        """Node-side end of a segment veth (15 chars max, stable across restarts)."""
        digest = hashlib.sha1(f"{self.netns_prefix}/{vrf}/{iface}".encode()).hexdigest()
        return f"kv{digest[:11]}"

    def vrf_device(self, vrf: str) -> str:
        """Name of the l3mdev device of a vrf-backend VRF."""
        return f"kvrf{hashlib.sha1(vrf.encode()).hexdigest()[:11]}"
