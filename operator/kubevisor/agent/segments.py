"""Network segments on a node: the bridge a VM NIC's tap joins, per (network, VLAN).

An untagged segment is the network's own bridge (``--network default=kvbr0``), node
infrastructure that exists before and after any VM. A VLAN segment is a bridge of its own
(``<bridge>v<id>``) with an 802.1Q sub-interface ``<bridge>.<id>`` of the network's bridge
enslaved, so tagged frames leave over the node's uplink. VLAN segments exist only while a
VM on the node needs them (VLAN pruning): the agent calls :meth:`Segments.sync` with the
set its VMs need, and reports what is set up.

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
import errno
import hashlib
import logging
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

logger = logging.getLogger(__name__)

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
    """False when VLAN frames cannot leave the node (kernel without 802.1Q)."""
    message: str = ""


class Segments:
    """Sets up and prunes VLAN segments in one network namespace (None: the caller's).

    Blocking (netlink round trips); call it through ``asyncio.to_thread``.
    """

    def __init__(self, *, netns: str | None = None) -> None:
        self.netns = netns

    def _ipr(self) -> IPRoute:
        return IPRoute(netns=self.netns) if self.netns else IPRoute()

    def ensure(self, segment: Segment) -> SegmentState:
        """Make the segment's bridge exist and be up; idempotent."""
        with self._ipr() as ipr:
            base = ipr.link_lookup(ifname=segment.base_bridge)
            if not base and segment.managed:
                base = self._add_managed(ipr, segment)
            if not base:
                raise SegmentError(
                    f"network {segment.network!r}: bridge {segment.base_bridge!r} does not exist"
                )
            if segment.managed:
                ipr.link("set", index=base[0], state="up")
            if segment.vlan is None:
                if segment.managed:
                    return SegmentState(
                        segment=segment,
                        uplinked=False,
                        message=f"network {segment.network} is local to this node (no uplink)",
                    )
                return SegmentState(segment=segment, uplinked=True)
            bridge = segment.bridge
            if not ipr.link_lookup(ifname=bridge):
                ipr.link("add", ifname=bridge, kind="bridge")
            bridge_index = ipr.link_lookup(ifname=bridge)[0]
            ipr.link("set", index=bridge_index, state="up")
            link = vlan_link_name(segment.base_bridge, segment.vlan)
            if not ipr.link_lookup(ifname=link):
                try:
                    ipr.link("add", ifname=link, kind="vlan", link=base[0], vlan_id=segment.vlan)
                except NetlinkError as exc:
                    if exc.code in (errno.EOPNOTSUPP, errno.ENOENT, errno.EINVAL):
                        return SegmentState(
                            segment=segment,
                            uplinked=False,
                            message=(
                                f"VLAN {segment.vlan} is local to this node: the kernel has "
                                "no 802.1Q support"
                            ),
                        )
                    raise
            link_index = ipr.link_lookup(ifname=link)[0]
            ipr.link("set", index=link_index, master=bridge_index, state="up")
            return SegmentState(segment=segment, uplinked=True)

    @staticmethod
    def _add_managed(ipr: IPRoute, segment: Segment) -> list[int]:
        try:
            ipr.link("add", ifname=segment.base_bridge, kind="bridge")
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
        found = ipr.link_lookup(ifname=segment.base_bridge)
        if found:
            ipr.link("set", index=found[0], ifalias=f"{ALIAS_MANAGED}{segment.network}")
        return list(found)

    def remove(self, segment: Segment) -> None:
        """Delete a VLAN segment's bridge and sub-interface; a managed network's untagged
        segment deletes the network's bridge (only if our alias marks it). Untagged
        segments of administrator bridges stay."""
        if segment.vlan is None:
            if segment.managed:
                self._remove_managed(segment)
            return
        self._delete_links(vlan_link_name(segment.base_bridge, segment.vlan), segment.bridge)

    def _remove_managed(self, segment: Segment) -> None:
        with self._ipr() as ipr:
            for index in ipr.link_lookup(ifname=segment.base_bridge):
                alias = ipr.get_links(index)[0].get_attr("IFLA_IFALIAS") or ""
                if alias == f"{ALIAS_MANAGED}{segment.network}":
                    self._delete(ipr, index)

    @staticmethod
    def _delete(ipr: IPRoute, index: int) -> None:
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise

    def _delete_links(self, *names: str) -> None:
        with self._ipr() as ipr:
            for name in names:
                for index in ipr.link_lookup(ifname=name):
                    self._delete(ipr, index)

    def present(self, candidates: list[Segment]) -> list[Segment]:
        """Which of ``candidates`` exist now (adoption after an agent restart)."""
        with self._ipr() as ipr:
            return [s for s in candidates if ipr.link_lookup(ifname=s.bridge)]

    def existing_vlan_segments(
        self, networks: dict[str, str], managed: Iterable[str] = ()
    ) -> list[Segment]:
        """Segments the agent may have made that exist now, so a restarted agent can prune
        the ones nothing needs any more: VLAN bridges of our networks (recognised by
        name) and the bridges of managed networks (recognised by our alias)."""
        managed = frozenset(managed)
        found = []
        with self._ipr() as ipr:
            links = ipr.get_links()
        names = {str(link.get_attr("IFLA_IFNAME")) for link in links}
        aliases = {
            str(link.get_attr("IFLA_IFNAME")): str(link.get_attr("IFLA_IFALIAS") or "")
            for link in links
        }
        for network in sorted(managed & set(networks)):
            if aliases.get(networks[network]) == f"{ALIAS_MANAGED}{network}":
                found.append(segment_of(network, None, networks, managed))
        for network, base in networks.items():
            for name in names:
                head, _, digits = name.rpartition("v")
                if not digits.isdigit() or not 1 <= int(digits) <= 4094:
                    continue
                if vlan_bridge_name(base, int(digits)) == name and head:
                    found.append(segment_of(network, int(digits), networks, managed))
        return sorted(found, key=_order)
