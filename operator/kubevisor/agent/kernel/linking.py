"""Links, addresses, policy rules and sysctls inside a VRF's namespace (pyroute2).

Small level-based helpers for :mod:`kubevisor.agent.kernel.vrfrealizing`: each makes one
piece of kernel state equal to the plan (addresses on a member, the lookup rule of a
netns-backend VRF, forwarding) or reads one attribute back.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

from pyroute2 import IPRoute

from kubevisor.agent.kernel import netnsthreads

#: Priority of the rule sending every lookup in a VRF namespace to the VRF's table (the
#: kernel's own l3mdev rule has 1000 too).
RULE_PRIORITY = 1000


def attr(msg: Any, name: str) -> Any:
    """A netlink attribute of a message (None when absent)."""
    return msg.get_attr(name)


def lookup(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def vrf_table(link: Any) -> int:
    info = attr(link, "IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    return int(data.get_attr("IFLA_VRF_TABLE")) if data is not None else 0


def set_forwarding(ns: str) -> None:
    """A VRF routes between its members: turn forwarding on inside its namespace."""
    with netnsthreads.entered(ns):
        for path in ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"):
            with open(path, "w") as handle:
                handle.write("1")


def ensure_addresses(ipr: IPRoute, index: int, addresses: Sequence[str]) -> None:
    """Global addresses on a member equal the plan's; link-local ones are left alone."""
    have: dict[str, Any] = {}
    for msg in ipr.get_addr(index=index):
        if msg["scope"] != 0:
            continue
        have[f"{attr(msg, 'IFA_ADDRESS')}/{msg['prefixlen']}"] = msg
    want = {str(ipaddress.ip_interface(a)) for a in addresses}
    for text in sorted(set(have) - want):
        address, length = text.split("/")
        ipr.addr("del", index=index, address=address, prefixlen=int(length))
    for text in sorted(want - set(have)):
        address, length = text.split("/")
        ipr.addr("add", index=index, address=address, prefixlen=int(length))


def ensure_rules(ctx: IPRoute, table: int) -> None:
    """In a VRF namespace every lookup goes to the VRF's table first, as with l3mdev."""
    for family in (socket.AF_INET, socket.AF_INET6):
        present = False
        for rule in ctx.get_rules(family=family):
            if rule.get("priority") != RULE_PRIORITY:
                continue
            if int(rule.get("table")) == table:
                present = True
            else:
                ctx.rule("del", family=family, priority=RULE_PRIORITY, table=rule.get("table"))
        if not present:
            ctx.rule("add", family=family, priority=RULE_PRIORITY, table=table)
