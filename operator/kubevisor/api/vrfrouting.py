"""A VRF's routing daemon: the spec (``spec.routing``: the daemon's own config, or typed
BGP and OSPF) and what each node reports of it (``status.nodes.<node>.daemon``: state,
sessions, routes learned).

Part of the VRF kind (`kubevisor.api.vrfs` holds the rest); the agent writes the daemon's
config from the typed spec (`agent.vrfs.routingconfig`) and reads its sessions back in
this shape, the controller turns the sessions into the RoutingSessions condition.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Final, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from kubevisor.api import common

RoutingDaemon = Literal["none", "bird", "frr"]
#: A node's routing daemon for a VRF: Running (its pid alive), Restarting (it died and
#: waits out its backoff), Stopped (not started: no valid config yet).
DaemonState = Literal["Running", "Restarting", "Stopped"]
#: A routing session the daemon reports: a BGP neighbour or an OSPF instance.
SessionProtocol = Literal["BGP", "OSPF"]
#: Most sessions one node entry lists (the rest are counted, not listed).
MAX_SESSIONS: Final = 64


ASNumber = Annotated[int, Field(ge=1, le=4_294_967_295)]
_UNIQUE_NEIGHBORS = common.rule(
    "self.all(n, self.exists_one(m, m.address == n.address))",
    "bgp neighbor addresses must be unique",
)


class BGPNeighbor(common.Model):
    """One BGP neighbour, reached over the VRF's interfaces."""

    address: common.IPAddress
    """The neighbour's address (its family picks the session's address family)."""
    remote_as: ASNumber
    """The neighbour's AS number; the same as bgp.localAS makes it iBGP."""


class VRFBGP(common.Model):
    """BGP for the common case: this VRF's AS and its neighbours."""

    local_as: ASNumber
    """This VRF's AS number."""
    neighbors: list[BGPNeighbor] = Field(
        min_length=1, max_length=32, json_schema_extra=common.cel(_UNIQUE_NEIGHBORS)
    )
    """Neighbours, each address at most once."""

    @model_validator(mode="after")
    def _unique(self) -> Self:
        if len({n.address for n in self.neighbors}) != len(self.neighbors):
            raise ValueError("bgp neighbor addresses must be unique")
        return self


class VRFOSPF(common.Model):
    """OSPFv2 (IPv4) for the common case: the VRF's interfaces in one area."""

    area: Annotated[int, Field(ge=0, le=4_294_967_295)] = 0
    """The area id, as a number (0 is the backbone)."""
    interfaces: list[common.InterfaceName] = Field(min_length=1, max_length=32)
    """Names of the VRF's interfaces to run OSPF on (their networks are announced)."""


_TYPED_RULE = common.rule(
    "!has(self.config) || (!has(self.bgp) && !has(self.ospf)"
    " && (!has(self.announce) || size(self.announce) == 0)"
    " && (!has(self.importPrefixes) || size(self.importPrefixes) == 0))",
    "routing.config (the daemon's own config) and the typed spec (bgp, ospf, announce,"
    " importPrefixes) are exclusive",
    field_path=".config",
)
_ANNOUNCE_RULE = common.rule(
    "!has(self.announce) || size(self.announce) == 0 || has(self.bgp)",
    "announce is what BGP exports; set bgp too (OSPF announces its interfaces' networks)",
    field_path=".announce",
)


class VRFRouting(common.Model):
    """An optional routing daemon run inside the VRF: its own config text, or a typed
    spec (bgp, ospf, announce, importPrefixes) the agent writes the config from."""

    model_config = ConfigDict(json_schema_extra=common.cel(_TYPED_RULE, _ANNOUNCE_RULE))

    daemon: RoutingDaemon = "none"
    """none, bird (BIRD 2) or frr (FRR: zebra, staticd and bgpd/ospfd as the config
    needs), run in the VRF's network namespace and cgroup with config; netns backend
    only so far."""
    config: Annotated[str, Field(max_length=65536)] | None = None
    """Daemon configuration file contents (bird.conf, or FRR's integrated frr.conf),
    validated on each node with the daemon's own parser (bird -p, vtysh --dryrun) before
    use; a refused config leaves the running daemon as it is. Exclusive with the typed
    spec."""
    router_id: (
        Annotated[
            str,
            Field(
                max_length=15,
                json_schema_extra=common.cel(
                    common.rule(
                        "isIP(self) && ip(self).family() == 4",
                        "must be an IPv4 address, e.g. 10.0.0.1",
                    )
                ),
            ),
        ]
        | None
    ) = None
    """Typed spec: the router id (an IPv4 address); unset lets the daemon pick one of the
    VRF's IPv4 addresses."""
    bgp: VRFBGP | None = None
    """Typed spec: BGP neighbours."""
    ospf: VRFOSPF | None = None
    """Typed spec: OSPFv2 on some of the VRF's interfaces."""
    announce: list[common.CanonicalPrefix] = Field(default_factory=list, max_length=256)
    """Typed spec: networks BGP announces to every neighbour (and only these: learned
    routes are not passed on)."""
    import_prefixes: list[common.CanonicalPrefix] = Field(default_factory=list, max_length=256)
    """Typed spec: accept only learned routes inside one of these prefixes (or equal to
    it); empty accepts every route learned."""

    @model_validator(mode="after")
    def _typed_or_config(self) -> Self:
        typed = self.bgp or self.ospf or self.announce or self.import_prefixes
        if self.config is not None and typed:
            raise ValueError(
                "routing.config (the daemon's own config) and the typed spec (bgp, ospf,"
                " announce, importPrefixes) are exclusive"
            )
        if self.announce and self.bgp is None:
            raise ValueError(
                "announce is what BGP exports; set bgp too (OSPF announces its interfaces'"
                " networks)"
            )
        if self.router_id is not None:
            try:
                ipaddress.IPv4Address(self.router_id)
            except ValueError:
                raise ValueError("routerId must be an IPv4 address, e.g. 10.0.0.1") from None
        return self

    @property
    def typed(self) -> bool:
        """Whether the config comes from the typed spec."""
        return self.bgp is not None or self.ospf is not None


class VRFDaemonStatus(common.Model):
    """The VRF's routing daemon on one node (routing.daemon other than none)."""

    name: RoutingDaemon
    """Which daemon, e.g. bird."""
    version: Annotated[str, Field(max_length=64)] | None = None
    """The daemon's version on this node, e.g. 2.0.12."""
    state: DaemonState
    """Running, Restarting (died; restarted with backoff 1 s doubling to 60 s) or Stopped."""
    pid: Annotated[int, Field(ge=1)] | None = None
    """Process id on the node while running."""
    restarts: Annotated[int, Field(ge=0)] | None = None
    """Deaths in a row this agent has restarted it after (0 once it ran for a minute)."""
    config_hash: Annotated[str, Field(max_length=64)] | None = None
    """First 12 hex digits of the sha256 of the config the daemon runs."""
    sessions: list[VRFSession] = Field(default_factory=list, max_length=MAX_SESSIONS)
    """Its BGP neighbours and OSPF instances as it reports them (at most 64 listed)."""
    sessions_up: Annotated[int, Field(ge=0)] | None = None
    """How many of its sessions are up (all of them, listed or not)."""
    sessions_total: Annotated[int, Field(ge=0)] | None = None
    """How many sessions it has configured."""
    routes_learned: Annotated[int, Field(ge=0)] | None = None
    """Routes learned over its sessions (imported from neighbours), summed."""
    routes: Annotated[int, Field(ge=0)] | None = None
    """Routes in its tables (learned, static and direct)."""


class VRFSession(common.Model):
    """One routing session of the VRF's daemon on one node, as the daemon reports it."""

    name: common.ShortString
    """The daemon's name for it: a BIRD protocol name, or the neighbour's address (FRR)."""
    protocol: SessionProtocol
    """BGP (one neighbour) or OSPF (one instance; up with at least one Full adjacency)."""
    up: bool
    """BGP: Established; OSPF: at least one neighbour in state Full."""
    state: Annotated[str, Field(max_length=256)] | None = None
    """The daemon's own words for its state, e.g. Established, Active, Connect: Socket:
    No route to host."""
    neighbor: Annotated[str, Field(max_length=64)] | None = None
    """BGP: the neighbour's address."""
    adjacencies: Annotated[int, Field(ge=0)] | None = None
    """OSPF: neighbours in state Full."""
    routes: Annotated[int, Field(ge=0)] | None = None
    """Routes learned (imported) over this session."""
