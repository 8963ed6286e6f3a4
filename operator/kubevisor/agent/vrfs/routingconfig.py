"""The daemon config a VRF's typed routing spec stands for (pure).

``routing.bgp``/``routing.ospf``/``routing.announce``/``routing.importPrefixes`` become a
BIRD 2 config (`bird`) or an FRR integrated config (`frr`) doing the same thing:

- BGP: one session per neighbour (its address family from its address), exporting only the
  ``announce`` networks of that family (learned routes are not passed on), importing what
  lies inside one of ``importPrefixes`` (or everything when empty);
- OSPFv2 on the named interfaces in one area (their networks are what it announces),
  importing under the same filter;
- learned routes go to the kernel in the VRF's namespace: BIRD into the VRF's table
  (``kernel table``), FRR's zebra into the namespace's main table;
- on the l3mdev backend (BIRD only, ``vrf`` given) every protocol that talks to the
  network or the kernel is bound to the VRF's device (BIRD 2's ``vrf "<device>"``): its
  sessions' sockets are bound to it, it sees only the VRF's interfaces, and the kernel
  protocol writes into the VRF's table, so two VRFs with the same addresses run side by
  side in the node's namespace.

The text is then validated by the daemon's own parser like any ``routing.config``.
"""

from __future__ import annotations

import ipaddress

from kubevisor.api import vrfrouting

HEADER = "# written by kubevisor from the VRF's typed routing spec\n"


def _family(text: str) -> int:
    return ipaddress.ip_network(text, strict=False).version


def _of(prefixes: list[str], family: int) -> list[str]:
    return [p for p in prefixes if _family(p) == family]


def _bird_import(routing: vrfrouting.VRFRouting, family: int) -> str:
    wanted = _of(routing.import_prefixes, family)
    if not routing.import_prefixes:
        return "import all;"
    if not wanted:
        return "import none;"
    return f"import where net ~ [ {', '.join(f'{p}+' for p in wanted)} ];"


def bird(routing: vrfrouting.VRFRouting, table: int, vrf: str | None = None) -> str:
    """BIRD 2's config for ``routing`` in a VRF whose table is ``table``; ``vrf``: the
    l3mdev device its protocols are bound to (None on the netns backend, where the
    namespace is the VRF)."""
    bound = f' vrf "{vrf}";' if vrf is not None else ""
    line = f'  vrf "{vrf}";\n' if vrf is not None else ""
    out = [HEADER]
    if routing.router_id:
        out.append(f"router id {routing.router_id};\n")
    out.append("protocol device {}\n")
    learned = "source ~ [ RTS_BGP, RTS_OSPF, RTS_OSPF_IA, RTS_OSPF_EXT1, RTS_OSPF_EXT2 ]"
    for family in (4, 6):
        out.append(
            f"protocol kernel kernel{family} {{{bound} ipv{family} {{ export where {learned}; }};"
            f" kernel table {table}; }}\n"
        )
    for family in (4, 6):
        routes = _of(routing.announce, family)
        if routes:
            lines = " ".join(f"route {p} blackhole;" for p in routes)
            out.append(f"protocol static announce{family} {{ ipv{family}; {lines} }}\n")
    if routing.bgp is not None:
        for i, neighbor in enumerate(routing.bgp.neighbors, 1):
            family = _family(neighbor.address)
            export = (
                f'export where proto = "announce{family}";'
                if _of(routing.announce, family)
                else "export none;"
            )
            out.append(
                f"protocol bgp neighbor{i} {{\n"
                f"{line}"
                f"  local as {routing.bgp.local_as};\n"
                f"  neighbor {neighbor.address} as {neighbor.remote_as};\n"
                f"  ipv{family} {{ {_bird_import(routing, family)} {export} }};\n"
                "}\n"
            )
    if routing.ospf is not None:
        interfaces = ", ".join(f'"{name}"' for name in routing.ospf.interfaces)
        out.append(
            "protocol ospf v2 ospf4 {\n"
            f"{line}"
            f"  ipv4 {{ {_bird_import(routing, 4)} export none; }};\n"
            f"  area {routing.ospf.area} {{ interface {interfaces}; }};\n"
            "}\n"
        )
    return "".join(out)


def _frr_lists(routing: vrfrouting.VRFRouting) -> list[str]:
    out: list[str] = []
    for family, keyword, longest in ((4, "ip", 32), (6, "ipv6", 128)):
        for name, prefixes in (
            ("KV-IMPORT", routing.import_prefixes),
            ("KV-ANNOUNCE", routing.announce),
        ):
            wanted = _of(prefixes, family)
            for seq, prefix in enumerate(wanted, 1):
                le = "" if name == "KV-ANNOUNCE" else f" le {longest}"
                length = ipaddress.ip_network(prefix).prefixlen
                le = "" if length == longest else le
                out.append(
                    f"{keyword} prefix-list {name}-{family} seq {seq * 5} permit {prefix}{le}\n"
                )
            match = f"match {keyword} address prefix-list {name}-{family}"
            if name == "KV-IMPORT" and not routing.import_prefixes:
                out.append(f"route-map {name}-{family} permit 10\nexit\n")
            elif wanted:
                out.append(f"route-map {name}-{family} permit 10\n {match}\nexit\n")
            else:
                out.append(f"route-map {name}-{family} deny 10\nexit\n")
    return out


def frr(routing: vrfrouting.VRFRouting) -> str:
    """FRR's integrated config for ``routing``."""
    out = ["!" + HEADER[1:], "frr defaults traditional\n"]
    if routing.bgp is not None:
        out.append(f"router bgp {routing.bgp.local_as}\n")
        if routing.router_id:
            out.append(f" bgp router-id {routing.router_id}\n")
        out.append(" no bgp ebgp-requires-policy\n no bgp network import-check\n")
        out.append(" no bgp default ipv4-unicast\n")
        for neighbor in routing.bgp.neighbors:
            out.append(f" neighbor {neighbor.address} remote-as {neighbor.remote_as}\n")
        for family in (4, 6):
            neighbors = [n for n in routing.bgp.neighbors if _family(n.address) == family]
            if not neighbors:
                continue
            out.append(f" address-family ipv{family} unicast\n")
            for prefix in _of(routing.announce, family):
                out.append(f"  network {prefix}\n")
            for n in neighbors:
                out.append(f"  neighbor {n.address} activate\n")
                out.append(f"  neighbor {n.address} route-map KV-IMPORT-{family} in\n")
                out.append(f"  neighbor {n.address} route-map KV-ANNOUNCE-{family} out\n")
            out.append(" exit-address-family\n")
        out.append("exit\n")
    if routing.ospf is not None:
        out.append("router ospf\n")
        if routing.router_id:
            out.append(f" ospf router-id {routing.router_id}\n")
        out.append("exit\n")
        out.append("ip protocol ospf route-map KV-IMPORT-4\n")
        for name in routing.ospf.interfaces:
            out.append(f"interface {name}\n ip ospf area {routing.ospf.area}\nexit\n")
    out += _frr_lists(routing)
    return "".join(out)


def config(routing: vrfrouting.VRFRouting, table: int, vrf: str | None = None) -> str:
    """The config text the daemon runs: ``routing.config`` as given, else the one the
    typed spec stands for (``vrf``: the l3mdev device, `bird`)."""
    if not routing.typed:
        return routing.config or ""
    return frr(routing) if routing.daemon == "frr" else bird(routing, table, vrf)
