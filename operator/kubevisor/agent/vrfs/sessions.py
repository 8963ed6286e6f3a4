"""A VRF's routing sessions as its daemon reports them: parsers of the daemon's output (pure).

The adapter (`kubevisor.agent.vrfs.supervising`) asks the running daemon over its control
socket and hands the text here; what comes back is the ``sessions``/``routesLearned`` part
of ``status.nodes.<node>.daemon`` (`vrfs.VRFDaemonStatus`).

- BIRD: ``birdc show protocols all`` (one block per protocol: BGP neighbours with their
  state and imported routes, OSPF instances), ``birdc show ospf neighbors`` (Full
  adjacencies per OSPF instance: an OSPF instance is up with at least one) and ``birdc
  show route count`` (routes in its tables).

A session is a BGP neighbour (up: Established) or an OSPF instance (up: at least one
neighbour in state Full); other protocols (device, kernel, static, direct) are not
sessions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kubevisor.agent.vrfs import specs
from kubevisor.api import vrfs


@dataclass(frozen=True)
class Session:
    """One session as read from the daemon."""

    name: str
    protocol: vrfs.SessionProtocol
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
