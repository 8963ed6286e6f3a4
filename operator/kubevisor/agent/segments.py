"""Network segments on a node, as data: the bridge a VM NIC's tap joins, per (network, VLAN).

Pure (names, which segment a NIC is on, which segments to prune); the netlink adapter
that creates and deletes the bridges is :mod:`kubevisor.agent.kernel.bridges`.

An untagged segment is the network's own bridge (``--network default=kvbr0``), node
infrastructure that exists before and after any VM. A VLAN segment is a bridge of its own
(``<bridge>v<id>``) with an 802.1Q sub-interface ``<bridge>.<id>`` of the network's bridge
enslaved, so tagged frames leave over the node's uplink. VLAN segments exist only while a
VM on the node needs them (VLAN pruning): the agent declares the set its VMs need
(:mod:`kubevisor.agent.segmenting`), and reports what is set up.

A *managed* network (agent flag ``--network NAME`` without ``=BRIDGE``) has no bridge
given by the node's administrator: the agent creates ``kvn-<name>`` (see
:func:`managed_bridge_name`) on demand, marks it with the alias ``kubevisor:net:<name>``
and deletes it when neither a VM nor a VRF on the node needs the network any more. It has
no uplink, so such a segment is node-local; VM NICs and VRF interfaces on it meet on the
one bridge. Which segments to delete is the pure :func:`prunable`.

Where the kernel lacks 802.1Q (CI hosts), the VLAN bridge is still created so guests on
the same node share the segment, and :class:`SegmentState` says it is node-local; the
agent reports that in the NetworkReady condition rather than failing silently.

Taps themselves are created by libvirt (``<interface type='bridge'>`` with a target
name) and go away with the domain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from collections.abc import Iterable

from kubevisor.api import conditions

MAX_IFNAME = 15
#: Alias marking a bridge the agent created for a managed network (value: network name),
#: so a restarted agent finds it and pruning never touches foreign links.
ALIAS_MANAGED = "kubevisor:net:"
MANAGED_PREFIX = "kvn-"


class SegmentError(RuntimeError):
    """A segment could not be set up; the message says which and why."""


def segment_name(network: str, vlan: int | None) -> str:
    """Name reported in the node's segment set: ``default``, ``vlan-100``, ``lab-vlan-7``."""
    if vlan is None:
        return network
    return f"vlan-{vlan}" if network == "default" else f"{network}-vlan-{vlan}"


def managed_bridge_name(network: str) -> str:
    """Bridge of a managed network: ``kvn-<network>``, or, when that exceeds IFNAMSIZ,
    ``kvn-<head>-<hash>`` (stable, and distinct for distinct long names)."""
    name = f"{MANAGED_PREFIX}{network}"
    if len(name) <= MAX_IFNAME:
        return name
    digest = hashlib.sha1(network.encode()).hexdigest()[:5]
    head = network[: MAX_IFNAME - len(MANAGED_PREFIX) - len(digest) - 1]
    return f"{MANAGED_PREFIX}{head}-{digest}"


def vlan_bridge_name(base_bridge: str, vlan: int) -> str:
    """``<bridge>v<id>``, truncated to fit IFNAMSIZ."""
    suffix = f"v{vlan}"
    return base_bridge[: MAX_IFNAME - len(suffix)] + suffix


def vlan_link_name(base_bridge: str, vlan: int) -> str:
    """``<bridge>.<id>``, truncated to fit IFNAMSIZ."""
    suffix = f".{vlan}"
    return base_bridge[: MAX_IFNAME - len(suffix)] + suffix


@dataclasses.dataclass(frozen=True)
class Segment:
    """A segment a VM needs: network name, VLAN (None: untagged), realised on ``bridge``."""

    network: str
    vlan: int | None
    base_bridge: str
    managed: bool = False
    """The base bridge belongs to the agent (created on demand, deleted when unneeded)."""

    @property
    def name(self) -> str:
        return segment_name(self.network, self.vlan)

    @property
    def bridge(self) -> str:
        """The bridge taps of this segment join."""
        return (
            self.base_bridge if self.vlan is None else vlan_bridge_name(self.base_bridge, self.vlan)
        )


def segment_of(
    network: str, vlan: int | None, bridges: dict[str, str], managed: Iterable[str] = ()
) -> Segment:
    """The segment of ``(network, vlan)`` on a node offering ``bridges`` (network -> base
    bridge), ``managed`` naming the networks whose bridge the agent owns. Pure; raises
    KeyError for a network the node does not offer."""
    return Segment(
        network=network, vlan=vlan, base_bridge=bridges[network], managed=network in managed
    )


def _order(segment: Segment) -> tuple[str, int]:
    return segment.network, segment.vlan or 0


def prunable(up: Iterable[Segment], needed: Iterable[Segment]) -> list[Segment]:
    """Which of the segments set up on the node to delete now (pure).

    ``needed`` is the union of what every user of segments on the node wants: VM NICs
    *and* VRF interfaces, so a bridge only a VRF uses is kept. A VLAN segment goes when
    nothing needs it; a managed network's bridge goes only when nothing needs the network
    at all (untagged or any of its VLANs: the 802.1Q links hang off that bridge). Bridges
    the administrator provides (``--network NAME=BRIDGE``, untagged) are never deleted.
    VLAN segments come first so a base bridge is deleted after its children.
    """
    want = set(needed)
    busy_bases = {s.base_bridge for s in want}
    gone = []
    for segment in set(up) - want:
        if segment.vlan is not None:
            gone.append(segment)
        elif segment.managed and segment.base_bridge not in busy_bases:
            gone.append(segment)
    return sorted(gone, key=lambda s: (s.vlan is None, *_order(s)))


@dataclasses.dataclass(frozen=True)
class SegmentState:
    """Outcome of setting up one segment."""

    segment: Segment
    uplinked: bool
    """False when frames cannot leave the node: a managed network (node-local by design)
    or a VLAN on a kernel without 802.1Q."""
    message: str = ""
    missing: conditions.Reason | None = None
    """Set when the segment works only in part because the node lacks something
    (BackendUnavailable: no 802.1Q, so the VLAN cannot leave the node). The VM's
    NetworkReady is then False with this reason, the VRF side's reason for the same
    cause."""


def guest_addresses(neighbours: Iterable[tuple[str, str]]) -> dict[str, str]:
    """MAC -> the address a guest is known by, from the node's neighbour entries
    ``(mac, address)`` (pure). What the node has heard a guest answer from is the guest's
    address as the node sees it (the IP column); IPv4 is preferred, and link-local,
    multicast and unspecified addresses say nothing about the guest."""
    best: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
    for mac, text in neighbours:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.is_link_local or address.is_multicast or address.is_unspecified:
            continue
        key = mac.lower()
        current = best.get(key)
        if current is None or (address.version, address) < (current.version, current):
            best[key] = address
    return {mac: str(address) for mac, address in best.items()}
