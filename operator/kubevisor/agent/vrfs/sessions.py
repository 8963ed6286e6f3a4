"""A VRF's routing sessions as its daemon reports them: parsers of the daemon's output (pure).

The adapter (`kubevisor.agent.vrfs.supervising`) asks the running daemon over its control
socket and hands the text here; what comes back is the ``sessions``/``routesLearned`` part
of ``status.nodes.<node>.daemon`` (`vrfrouting.VRFDaemonStatus`).

- BIRD: ``birdc show protocols all`` (one block per protocol: BGP neighbours with their
  state and imported routes, OSPF instances), ``birdc show ospf neighbors`` (Full
  adjacencies per OSPF instance: an OSPF instance is up with at least one) and ``birdc
  show route count`` (routes in its tables).
- FRR: ``vtysh -c 'show bgp summary json'`` (neighbours, state, prefixes received),
  ``show ip ospf neighbor json`` (Full adjacencies of its one OSPF instance) and ``show
  ip route summary json`` (routes in zebra's RIB, OSPF's among them).

A session is a BGP neighbour (up: Established) or an OSPF instance (up: at least one
neighbour in state Full); other protocols (device, kernel, static, direct) are not
sessions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubevisor.agent.vrfs import specs
from kubevisor.api import vrfrouting


@dataclass(frozen=True)
class Session:
    """One session as read from the daemon."""

    name: str
    protocol: vrfrouting.SessionProtocol
    up: bool
    state: str | None = None
    neighbor: str | None = None
    adjacencies: int | None = None
    routes: int = 0

    def wire(self) -> specs.SessionStatus:
        """Its ``status.nodes.<node>.daemon.sessions[]`` entry (None values cleared)."""
        return {
            "name": self.name[:63],
            "protocol": self.protocol,
            "up": self.up,
            "state": self.state[:256] if self.state else None,
            "neighbor": self.neighbor,
            "adjacencies": self.adjacencies,
            "routes": self.routes,
        }


_BIRD_PROTOCOLS = {"BGP": "BGP", "OSPF": "OSPF"}
_ROUTES = re.compile(r"^\s+Routes:\s+(\d+) imported")
_NEIGHBOR = re.compile(r"^\s+Neighbor address:\s+(\S+)")


def bird_protocols(text: str, full: Mapping[str, int] | None = None) -> list[Session]:
    """The sessions in ``birdc show protocols all``; ``full`` is `bird_ospf_full` (Full
    adjacencies per OSPF instance; without it an OSPF instance counts none)."""
    full = full or {}
    out: list[Session] = []
    current: dict[str, str] | None = None
    neighbor: str | None = None
    routes = 0

    def close() -> None:
        if current is None or current["proto"] not in _BIRD_PROTOCOLS:
            return
        name, proto, state, info = (
            current["name"],
            current["proto"],
            current["state"],
            current["info"],
        )
        if proto == "BGP":
            words = info or state
            out.append(
                Session(name, "BGP", info.startswith("Established"), words, neighbor, None, routes)
            )
        else:
            adj = full.get(name, 0)
            words = f"{state} {info}".strip() if state != "up" else info or state
            out.append(Session(name, "OSPF", state == "up" and adj > 0, words, None, adj, routes))

    for line in text.splitlines():
        if not line.strip() or line.startswith(("BIRD ", "Name ")):
            continue
        if not line[0].isspace():
            close()
            parts = line.split(None, 5)
            if len(parts) < 5:
                current = None
                continue
            current = {
                "name": parts[0],
                "proto": parts[1],
                "state": parts[3],
                "info": " ".join(parts[5].split()) if len(parts) > 5 else "",
            }
            neighbor, routes = None, 0
            continue
        if (m := _ROUTES.match(line)) is not None:
            routes += int(m.group(1))
        elif (m := _NEIGHBOR.match(line)) is not None:
            neighbor = m.group(1)
    close()
    return out


def bird_ospf_full(text: str) -> dict[str, int]:
    """Neighbours in state Full per OSPF instance, from ``birdc show ospf neighbors``
    (``There is no OSPF protocol running``: none)."""
    out: dict[str, int] = {}
    current: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if re.fullmatch(r"\S+:", stripped):
            current = stripped[:-1]
            out.setdefault(current, 0)
        elif current is not None:
            fields = stripped.split()
            if len(fields) >= 3 and fields[2].startswith("Full"):
                out[current] += 1
    return out


def bird_route_count(text: str) -> int | None:
    """Routes in the daemon's tables, from ``birdc show route count`` (``Total: 4 of 4
    routes ...``: the first number, the routes that passed the filters)."""
    m = re.search(r"^Total:\s+(\d+) of \d+ routes", text, re.MULTILINE)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Summary:
    """The sessions part of a daemon's status entry."""

    sessions: tuple[Session, ...]
    routes: int | None = None

    @property
    def up(self) -> int:
        return sum(1 for s in self.sessions if s.up)

    @property
    def learned(self) -> int:
        return sum(s.routes for s in self.sessions)

    def down(self) -> list[Session]:
        return [s for s in self.sessions if not s.up]


def summarize(sessions: Iterable[Session], routes: int | None = None) -> Summary:
    """The sessions, sorted by name, with the route count of the daemon's tables."""
    return Summary(tuple(sorted(sessions, key=lambda s: (s.protocol, s.name))), routes)


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def frr_bgp(text: str) -> list[Session]:
    """The BGP neighbours in ``vtysh -c 'show bgp summary json'`` (every address family;
    a neighbour in two families is one session, its prefixes summed)."""
    by_peer: dict[str, Session] = {}
    for family in _json(text).values():
        if not isinstance(family, dict):
            continue
        for address, peer in (family.get("peers") or {}).items():
            state = str(peer.get("state") or "")
            routes = int(peer.get("pfxRcd") or 0)
            seen = by_peer.get(address)
            if seen is not None:
                routes += seen.routes
            by_peer[address] = Session(
                address, "BGP", state == "Established", state or None, address, None, routes
            )
    return list(by_peer.values())


def frr_ospf(neighbors: str, routes: str) -> list[Session]:
    """FRR's OSPF instance (one per daemon, named ``ospf``) from ``show ip ospf neighbor
    json`` (Full adjacencies) and ``show ip route summary json`` (its routes)."""
    full = 0
    states: list[str] = []
    for entries in (_json(neighbors).get("neighbors") or {}).values():
        for entry in entries if isinstance(entries, list) else [entries]:
            state = str(entry.get("nbrState") or entry.get("state") or "")
            states.append(state)
            full += state.startswith("Full")
    learned = sum(
        int(r.get("rib") or 0) for r in _json(routes).get("routes") or [] if r.get("type") == "ospf"
    )
    state = ", ".join(sorted(set(states))) or "no neighbours"
    return [Session("ospf", "OSPF", full > 0, state, None, full, learned)]


def frr_route_count(text: str) -> int | None:
    """Routes in zebra's RIB, from ``show ip route summary json`` (``routesTotal``)."""
    total = _json(text).get("routesTotal")
    return int(total) if isinstance(total, int) else None
