"""What one interface of the node is: its IPv4 addresses, whether it is a bridge, and
the bridge it is a port of (pyroute2, in the node's network namespace). Read once at
agent start for the management interface (:mod:`kubevisor.agent.management`)."""

from __future__ import annotations

import dataclasses
import socket

from pyroute2 import IPRoute

from kubevisor.agent.kernel import linking


@dataclasses.dataclass(frozen=True)
class Interface:
    name: str
    ipv4: tuple[str, ...]
    is_bridge: bool
    master: str | None
    """The bridge (or other master) this interface is a port of."""


def read(netns: str | None, name: str) -> Interface | None:
    """The interface ``name`` in ``netns`` (None: the agent's own namespace); None when
    there is none. Blocking: run it in a thread."""
    with IPRoute(netns=netns, flags=0) if netns else IPRoute() as ipr:
        index = linking.lookup(ipr, name)
        if index is None:
            return None
        (link,) = ipr.get_links(index)
        info = linking.attr(link, "IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        master_index = linking.attr(link, "IFLA_MASTER")
        master = None
        if master_index:
            (m,) = ipr.get_links(master_index)
            master = str(linking.attr(m, "IFLA_IFNAME"))
        addresses = tuple(
            str(linking.attr(a, "IFA_ADDRESS"))
            for a in ipr.get_addr(index=index, family=socket.AF_INET)
        )
    return Interface(name=name, ipv4=addresses, is_bridge=kind == "bridge", master=master)
