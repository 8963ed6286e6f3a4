"""The netlink adapter for network segments: creates, finds and deletes their bridges.

What a segment is and which ones to delete is pure (:mod:`kubevisor.agent.segments`);
this module only talks to the kernel, in one network namespace.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kubevisor.agent.segments import (
    ALIAS_MANAGED,
    Segment,
    SegmentError,
    SegmentState,
    segment_of,
    vlan_bridge_name,
    vlan_link_name,
)
from kubevisor.api import conditions

# rtnetlink neighbour states (linux/neighbour.h)
NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_DELAY = 0x08
NUD_PROBE = 0x10
NUD_PERMANENT = 0x80


class Segments:
    """Sets up and prunes VLAN segments in one network namespace (None: the caller's).

    Blocking (netlink round trips); call it through ``asyncio.to_thread``.
    """

    def __init__(self, *, netns: str | None = None) -> None:
        self.netns = netns

    def _ipr(self) -> IPRoute:
        return IPRoute(netns=self.netns) if self.netns else IPRoute()

    def neighbours(self) -> list[tuple[str, str]]:
        """``(mac, address)`` of every neighbour entry the node holds that is or was
        recently reachable (what :func:`segments.guest_addresses` reads)."""
        wanted = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT
        out: list[tuple[str, str]] = []
        with self._ipr() as ipr:
            for entry in ipr.get_neighbours():
                if not entry.get("state", 0) & wanted:
                    continue
                mac, address = entry.get_attr("NDA_LLADDR"), entry.get_attr("NDA_DST")
                if mac and address:
                    out.append((str(mac), str(address)))
        return out

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
                                f"VLAN {segment.vlan} on network {segment.network!r} stays on "
                                "this node: 802.1Q not available in this kernel"
                            ),
                            missing=conditions.Reason.BACKEND_UNAVAILABLE,
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
        return sorted(found, key=lambda s: (s.network, s.vlan or 0))
