"""VRF: a VRF-lite virtual router on selected nodes (routing table, member interfaces
and segments, static routes, a resource context, an optional routing daemon).

Status carries a map keyed by node name so each node's agent can merge-patch its own
entry without overwriting the others'.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from kubevisor.api import common, conditions, machines

#: Kernel tables that belong to the host: default (253), main (254), local (255).
RESERVED_TABLES = frozenset({253, 254, 255})
MAX_TABLE = 4_294_967_295
RESERVED_MESSAGE = "tables 253, 254 and 255 are the host's default, main and local tables"

Backend = Literal["auto", "vrf", "netns"]
RealBackend = Literal["vrf", "netns"]
RouteType = Literal["unicast", "blackhole", "unreachable", "prohibit"]
RoutingDaemon = Literal["none", "bird"]

TableId = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_TABLE,
        json_schema_extra=common.cel(
            common.rule(
                "!(self in [253, 254, 255])",
                RESERVED_MESSAGE,
            )
        ),
    ),
]


class VRFPhase(StrEnum):
    """Lifecycle phase of a VRF across its nodes."""

    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"
    TERMINATING = "Terminating"


class VRFInterface(common.Model):
    """A member interface: a node segment (network, optionally a VLAN on it) or an
    existing host interface moved into the VRF."""

    model_config = ConfigDict(
        json_schema_extra=common.cel(
            common.rule(
                "has(self.network) != has(self.hostInterface)",
                "exactly one of network (a segment, optionally with vlan) or hostInterface"
                " must be set",
                field_path=".hostInterface",
            ),
            common.rule(
                "!has(self.vlan) || has(self.network)",
                "vlan is a VLAN on a network; set network too",
                field_path=".vlan",
            ),
        )
    )

    name: Annotated[
        common.InterfaceName,
        Field(
            json_schema_extra=common.cel(
                common.rule("self != 'lo'", "'lo' is the VRF's own loopback")
            )
        ),
    ]
    """Device name inside the VRF (at most 15 characters)."""
    network: (
        Annotated[str, Field(min_length=1, max_length=63, pattern=common.DNS_LABEL_PATTERN)] | None
    ) = None
    """Segment (network) name to attach; "default" is the node fabric."""
    vlan: machines.VLANId | None = None
    """VLAN id on the network, 1..4094."""
    host_interface: common.InterfaceName | None = None
    """Existing host device to move into the VRF (instead of a segment)."""
    addresses: list[common.CIDR] = Field(default_factory=list, max_length=16)
    """Addresses with prefix length, e.g. 10.0.0.1/24."""

    @model_validator(mode="after")
    def _one_attachment(self) -> Self:
        if (self.network is None) == (self.host_interface is None):
            raise ValueError(
                "exactly one of network (a segment, optionally with vlan) or hostInterface"
                " must be set"
            )
        if self.vlan is not None and self.network is None:
            raise ValueError("vlan is a VLAN on a network; set network too")
        if self.name == "lo":
            raise ValueError("'lo' is the VRF's own loopback")
        return self


class Route(common.Model):
    """A static route in the VRF's table."""

    model_config = ConfigDict(
        json_schema_extra=common.cel(
            common.rule(
                "(has(self.type) && self.type != 'unicast') || has(self.via) || has(self.device)",
                "a unicast route needs via or device",
                field_path=".via",
            ),
            common.rule(
                "!has(self.type) || self.type == 'unicast'"
                " || (!has(self.via) && !has(self.device))",
                "only unicast routes take via or device",
                field_path=".type",
            ),
            common.rule(
                "!has(self.via) || !isIP(self.via) || !isCIDR(self.prefix)"
                " || ip(self.via).family() == cidr(self.prefix).ip().family()",
                "via must be of the same address family as prefix",
                field_path=".via",
            ),
        )
    )

    prefix: common.Prefix
    """Destination prefix with no host bits set, e.g. 10.1.0.0/16 or 0.0.0.0/0."""
    via: common.IPAddress | None = None
    """Gateway address."""
    device: common.InterfaceName | None = None
    """Outgoing interface: the name of one of the VRF's interfaces."""
    type: RouteType = "unicast"
    """unicast (forward), blackhole (drop), unreachable or prohibit (reject with ICMP)."""
    metric: Annotated[int, Field(ge=0, le=MAX_TABLE)] | None = None
    """Route priority; lower wins."""

    @model_validator(mode="after")
    def _route_shape(self) -> Self:
        if self.type == "unicast" and self.via is None and self.device is None:
            raise ValueError("a unicast route needs via or device")
        if self.type != "unicast" and (self.via is not None or self.device is not None):
            raise ValueError("only unicast routes take via or device")
        if self.via is not None:
            family = ipaddress.ip_network(self.prefix).version
            if ipaddress.ip_address(self.via).version != family:
                raise ValueError("via must be of the same address family as prefix")
        return self


class VRFResources(common.Model):
    """Limits of the VRF's context (its cgroup) where the backend has one (netns)."""

    cpu: common.PositiveQuantity | None = None
    """CPU limit, e.g. 500m."""
    memory: common.PositiveQuantity | None = None
    """Memory limit, e.g. 64Mi."""


class VRFRouting(common.Model):
    """An optional routing daemon run inside the VRF."""

    daemon: RoutingDaemon = "none"
    """none, or bird (run in the VRF's context with config)."""
    config: Annotated[str, Field(max_length=65536)] | None = None
    """Daemon configuration file contents."""


_UNIQUE_IFACES = common.rule(
    "self.all(i, self.exists_one(j, j.name == i.name))", "interface names must be unique"
)


class VRFSpec(common.Model):
    """Desired VRF: table, members, routes, where and how it is realized."""

    model_config = ConfigDict(
        json_schema_extra=common.cel(
            common.rule(
                "!has(self.routes) || self.routes.all(r, !has(r.device) ||"
                " (has(self.interfaces) && self.interfaces.exists(i, i.name == r.device)))",
                "a route's device must be one of the VRF's interfaces",
                field_path=".routes",
            )
        )
    )

    table: TableId | None = None
    """Routing table id, 1..4294967295 except 253-255; unset lets the controller allocate
    one (see status.tableAllocated)."""
    interfaces: list[VRFInterface] = Field(
        default_factory=list, max_length=32, json_schema_extra=common.cel(_UNIQUE_IFACES)
    )
    """Member interfaces."""
    routes: list[Route] = Field(default_factory=list, max_length=256)
    """Static routes."""
    node_selector: dict[str, common.LabelValue] = Field(default_factory=dict, max_length=32)
    """Labels of the nodes to realize the VRF on; empty means every node."""
    backend: Backend = "auto"
    """vrf: an l3mdev VRF device; netns: a network namespace; auto: vrf where the node's
    kernel supports it, else netns."""
    resources: VRFResources | None = None
    """CPU and memory limits of the VRF's context."""
    routing: VRFRouting | None = None
    """Routing daemon."""

    @model_validator(mode="after")
    def _route_devices(self) -> Self:
        names = {i.name for i in self.interfaces}
        if len(names) != len(self.interfaces):
            raise ValueError("interface names must be unique")
        if self.table is not None and self.table in RESERVED_TABLES:
            raise ValueError(
                "tables 253, 254 and 255 are the host's default, main and local tables"
            )
        for route in self.routes:
            if route.device is not None and route.device not in names:
                raise ValueError("a route's device must be one of the VRF's interfaces")
        return self


class VRFUsage(common.Model):
    """Resource usage of the VRF's context, read from its cgroup."""

    cpu_seconds: Annotated[float, Field(ge=0)] | None = None
    """CPU time consumed, in seconds."""
    memory_bytes: Annotated[int, Field(ge=0)] | None = None
    """Memory in use, in bytes."""


class VRFNodeStatus(common.Model):
    """What one node's agent reports for this VRF, read back from the kernel."""

    backend: RealBackend | None = None
    """Backend used on this node."""
    table: Annotated[int, Field(ge=0, le=MAX_TABLE)] | None = None
    """Table in use on this node."""
    interfaces: list[common.ShortString] = Field(default_factory=list, max_length=32)
    """Member interfaces present."""
    routes_installed: Annotated[int, Field(ge=0)] | None = None
    """Number of the spec's routes present in the table."""
    ready: bool | None = None
    """Whether this node matches the spec."""
    message: Annotated[str, Field(max_length=4096)] | None = None
    """What is wrong on this node, if anything."""
    usage: VRFUsage | None = None
    """Resource usage of the VRF's context."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """metadata.generation this entry was computed from."""
    last_sync_time: common.Timestamp | None = None
    """When the agent last compared the node with the spec."""


class VRFStatus(conditions.Status):
    """Observed state across nodes."""

    phase: VRFPhase | None = None
    """Lifecycle phase."""
    ready_nodes: Annotated[str, Field(max_length=32)] | None = None
    """Ready nodes out of selected nodes, e.g. 2/3."""
    table_allocated: Annotated[int, Field(ge=0, le=MAX_TABLE)] | None = None
    """Table in use: spec.table, or the one the controller allocated."""
    nodes: dict[str, VRFNodeStatus] = Field(default_factory=dict, max_length=1024)
    """Per-node state keyed by node name; each agent patches only its own key."""


class VRF(common.Resource):
    """A VRF-lite virtual router realized on the selected nodes."""

    kind: Literal["VRF"] = "VRF"
    """Always VRF."""
    spec: VRFSpec
    """Desired VRF."""
    status: VRFStatus | None = None
    """Observed state."""
