"""Network segments on a node: the bridge a VM NIC's tap joins, per (network, VLAN).

An untagged segment is the network's own bridge (``--network default=kvbr0``), node
infrastructure that exists before and after any VM. A VLAN segment is a bridge of its own
(``<bridge>v<id>``) with an 802.1Q sub-interface ``<bridge>.<id>`` of the network's bridge
enslaved, so tagged frames leave over the node's uplink. VLAN segments exist only while a
VM on the node needs them (VLAN pruning): the agent calls :meth:`Segments.sync` with the
set its VMs need, and reports what is set up.

Where the kernel lacks 802.1Q (CI hosts), the VLAN bridge is still created so guests on
the same node share the segment, and :class:`SegmentState` says it is node-local; the
agent reports that in the NetworkReady condition rather than failing silently.

Taps themselves are created by libvirt (``<interface type='bridge'>`` with a target
name) and go away with the domain.
"""

from __future__ import annotations

import dataclasses
import errno
import logging

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

logger = logging.getLogger(__name__)

#: Prefix making our VLAN bridges recognisable, so pruning never touches foreign links.
MAX_IFNAME = 15


class SegmentError(RuntimeError):
    """A segment could not be set up; the message says which and why."""


def segment_name(network: str, vlan: int | None) -> str:
    """Name reported in the node's segment set: ``default``, ``vlan-100``, ``lab-vlan-7``."""
    if vlan is None:
        return network
    return f"vlan-{vlan}" if network == "default" else f"{network}-vlan-{vlan}"


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

    @property
    def name(self) -> str:
        return segment_name(self.network, self.vlan)

    @property
    def bridge(self) -> str:
        """The bridge taps of this segment join."""
        return (
            self.base_bridge if self.vlan is None else vlan_bridge_name(self.base_bridge, self.vlan)
        )


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
            if not base:
                raise SegmentError(
                    f"network {segment.network!r}: bridge {segment.base_bridge!r} does not exist"
                )
            if segment.vlan is None:
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

    def remove(self, segment: Segment) -> None:
        """Delete a VLAN segment's bridge and sub-interface (untagged ones stay)."""
        if segment.vlan is None:
            return
        with self._ipr() as ipr:
            for name in (vlan_link_name(segment.base_bridge, segment.vlan), segment.bridge):
                for index in ipr.link_lookup(ifname=name):
                    try:
                        ipr.link("del", index=index)
                    except NetlinkError as exc:
                        if exc.code != errno.ENODEV:
                            raise

    def present(self, candidates: list[Segment]) -> list[Segment]:
        """Which of ``candidates`` exist now (adoption after an agent restart)."""
        with self._ipr() as ipr:
            return [s for s in candidates if ipr.link_lookup(ifname=s.bridge)]

    def existing_vlan_segments(self, networks: dict[str, str]) -> list[Segment]:
        """VLAN segments of our networks that exist now, recognised by bridge name, so a
        restarted agent can prune the ones no VM needs any more."""
        found = []
        with self._ipr() as ipr:
            names = {str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
        for network, base in networks.items():
            for name in names:
                head, _, digits = name.rpartition("v")
                if not digits.isdigit() or not 1 <= int(digits) <= 4094:
                    continue
                if vlan_bridge_name(base, int(digits)) == name and head:
                    found.append(Segment(network=network, vlan=int(digits), base_bridge=base))
        return sorted(found, key=lambda s: (s.network, s.vlan or 0))
