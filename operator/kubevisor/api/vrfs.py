"""VRF: a VRF-lite virtual router on selected nodes (routing table, member interfaces
and segments, static routes, a resource context, an optional routing daemon).

The routing daemon's spec and read-back (``spec.routing``, ``status.nodes.<node>.daemon``)
are `kubevisor.api.vrfrouting`.

Status carries a map keyed by node name so each node's agent can merge-patch its own
entry without overwriting the others'.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Self

import pydantic
from pydantic import AfterValidator, ConfigDict, Field, model_validator

from kubevisor.api import common, conditions, machines, quantities, vrfrouting

#: Kernel tables that belong to the host: compat (252), default (253), main (254) and
#: local (255); 0 (unspec) is below the range. The one list both the API server (CEL,
#: generated from this) and the runtime check against.
RESERVED_TABLES: Final = frozenset({252, 253, 254, 255})
MAX_TABLE: Final = 4_294_967_295
RESERVED_MESSAGE: Final = (
    "tables 252, 253, 254 and 255 are the host's compat, default, main and local tables"
)
#: Where the controller allocates a table for a VRF without ``spec.table`` (inclusive).
AUTO_TABLE_FIRST: Final = 1000
AUTO_TABLE_LAST: Final = 1999
#: Longest VRF name: ``<namespace>.<name>`` becomes a network namespace (a file under
#: /run/netns), a cgroup directory and part of 255-byte interface aliases on the node.
MAX_NAME_LENGTH: Final = 63
#: Largest CPU limit in cores. The CFS quota is written in microseconds per 100 ms
#: period; a limit beyond any real node is no limit, and 1e9 cores overflows the kernel.
MAX_CPU: Final = "512"
#: Largest memory limit: the cgroup file takes bytes as a 64-bit number.
MAX_MEMORY: Final = "1Ei"

Backend = Literal["auto", "vrf", "netns"]
RealBackend = Literal["vrf", "netns"]
RouteType = Literal["unicast", "blackhole", "unreachable", "prohibit"]
TableId = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_TABLE,
        json_schema_extra=common.cel(
            common.rule(
                f"!(self in [{', '.join(str(t) for t in sorted(RESERVED_TABLES))}])",
                RESERVED_MESSAGE,
            )
        ),
    ),
]


def _unicast_host(value: str) -> str:
    """What the kernel can own as an interface address: a global unicast address (the
    CEL ``isGlobalUnicast()``: not unspecified, loopback, multicast, link-local or the
    IPv4 broadcast address). Link-local addresses are the kernel's own per link."""
    address = ipaddress.ip_interface(value).ip
    if (
        address.is_unspecified
        or address.is_loopback
        or address.is_multicast
        or address.is_link_local
        or address == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise ValueError(f"{value!r} is not a unicast host address")
    return value


#: An interface address with its prefix length, e.g. 10.0.0.1/24: a global unicast
#: address (private ranges included); 0.0.0.0/0, multicast, loopback and link-local
#: addresses are refused.
InterfaceAddress = Annotated[
    common.CIDR,
    Field(
        json_schema_extra=common.cel(
            common.CIDR_RULE,
            common.rule(
                "!isCIDR(self) || cidr(self).ip().isGlobalUnicast()",
                "must be a unicast host address with a prefix length, e.g. 10.0.0.1/24"
                " (not unspecified, loopback, multicast or link-local)",
            ),
        )
    ),
    AfterValidator(_unicast_host),
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
    addresses: list[InterfaceAddress] = Field(default_factory=list, max_length=16)
    """Unicast addresses with prefix length, e.g. 10.0.0.1/24."""

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

    prefix: common.CanonicalPrefix
    """Destination prefix with no host bits set, in canonical form, e.g. 10.1.0.0/16 or
    0.0.0.0/0; (prefix, metric) is the route's identity in the table."""
    via: common.IPAddress | None = None
    """Gateway address."""
    device: common.InterfaceName | None = None
    """Outgoing interface: the name of one of the VRF's interfaces."""
    type: RouteType = "unicast"
    """unicast (forward), blackhole (drop), unreachable or prohibit (reject with ICMP)."""
    metric: Annotated[int, Field(ge=0, le=MAX_TABLE)] = 0
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


def _at_most(limit: str) -> AfterValidator:
    def check(value: str) -> str:
        if quantities.parse(value) > quantities.parse(limit):
            raise ValueError(f"{value!r} is more than {limit}")
        return value

    return AfterValidator(check)


CPULimit = Annotated[
    common.PositiveQuantity,
    Field(
        json_schema_extra=common.cel(
            common.POSITIVE_QUANTITY_RULE,
            common.rule(
                f"!isQuantity(self) || quantity(self).compareTo(quantity('{MAX_CPU}')) <= 0",
                f"must be at most {MAX_CPU} cores",
            ),
        )
    ),
    _at_most(MAX_CPU),
]
MemoryLimit = Annotated[
    common.PositiveQuantity,
    Field(
        json_schema_extra=common.cel(
            common.POSITIVE_QUANTITY_RULE,
            common.rule(
                f"!isQuantity(self) || quantity(self).compareTo(quantity('{MAX_MEMORY}')) <= 0",
                f"must be at most {MAX_MEMORY}",
            ),
        )
    ),
    _at_most(MAX_MEMORY),
]


class VRFResources(common.Model):
    """Limits of the VRF's context (its cgroup) where the backend has one (netns)."""

    cpu: CPULimit | None = None
    """CPU limit in cores, e.g. 500m or 2; at most 512."""
    memory: MemoryLimit | None = None
    """Memory limit, e.g. 64Mi, 1G or 1e9; a fraction of a byte counts as a byte (as
    Kubernetes rounds); at most 1Ei."""


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
            ),
            common.rule(
                "!has(self.routing) || !has(self.routing.ospf) ||"
                " self.routing.ospf.interfaces.all(n, has(self.interfaces) &&"
                " self.interfaces.exists(i, i.name == n))",
                "routing.ospf.interfaces must name the VRF's interfaces",
                field_path=".routing.ospf.interfaces",
            ),
        )
    )

    table: TableId | None = None
    """Routing table id, 1..4294967295 except 252-255; unset lets the controller allocate
    one from 1000..1999 (see status.tableAllocated)."""
    interfaces: list[VRFInterface] = Field(
        default_factory=list, max_length=32, json_schema_extra=common.cel(_UNIQUE_IFACES)
    )
    """Member interfaces."""
    routes: list[Route] = Field(
        default_factory=list,
        max_length=256,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["prefix", "metric"],
        },
    )
    """Static routes; each (prefix, metric) at most once, as the kernel keys them."""
    node_selector: common.NodeSelector = Field(default_factory=dict)
    """Labels of the nodes to realize the VRF on; empty means every node."""
    backend: Backend = "auto"
    """vrf: an l3mdev VRF device; netns: a network namespace; auto: vrf where the node's
    kernel supports it, else netns."""
    resources: VRFResources | None = None
    """CPU and memory limits of the VRF's context."""
    routing: vrfrouting.VRFRouting | None = None
    """Routing daemon."""

    @model_validator(mode="after")
    def _route_devices(self) -> Self:
        names = {i.name for i in self.interfaces}
        if len(names) != len(self.interfaces):
            raise ValueError("interface names must be unique")
        if self.table is not None and self.table in RESERVED_TABLES:
            raise ValueError(RESERVED_MESSAGE)
        keys = [(route.prefix, route.metric) for route in self.routes]
        if len(set(keys)) != len(keys):
            raise ValueError("routes must be unique by (prefix, metric)")
        for route in self.routes:
            if route.device is not None and route.device not in names:
                raise ValueError("a route's device must be one of the VRF's interfaces")
        ospf = self.routing.ospf if self.routing is not None else None
        if ospf is not None and not set(ospf.interfaces) <= names:
            raise ValueError("routing.ospf.interfaces must name the VRF's interfaces")
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
    reason: Annotated[str, Field(max_length=128, pattern=conditions.REASON_PATTERN)] | None = None
    """CamelCase reason when not ready (e.g. BackendUnavailable, SegmentMissing); the
    controller copies it into the Ready condition."""
    message: Annotated[str, Field(max_length=4096)] | None = None
    """What is wrong on this node, if anything, as a sentence."""
    usage: VRFUsage | None = None
    """Resource usage of the VRF's context."""
    daemon: vrfrouting.VRFDaemonStatus | None = None
    """The routing daemon on this node, when routing.daemon is not none."""
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


def check_name(name: str | None) -> None:
    """Refuse a VRF name too long for the node names derived from it (see
    `MAX_NAME_LENGTH`); the CRD says the same with a CEL rule on metadata.name."""
    if name is not None and not re.fullmatch(common.DNS_SUBDOMAIN_PATTERN[1:-1], name):
        raise ValueError(f"VRF name {name!r} is not a DNS-1123 subdomain")
    if name is not None and len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"a VRF name may have at most {MAX_NAME_LENGTH} characters; {name[:20]}... has"
            f" {len(name)}"
        )


NAME_RULE: Final = common.rule(
    f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
    f"a VRF name may have at most {MAX_NAME_LENGTH} characters: it names a network"
    " namespace and cgroup on every node",
)


def selects_node(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """Whether a nodeSelector matches a node's labels (empty selects every node). The
    controller counts the nodes and each agent decides whether it is one with this."""
    return all(labels.get(k) == v for k, v in (selector or {}).items())


class InvalidVRF(ValueError):
    """A stored VRF the runtime cannot act on; the message names the fields."""


def parse_spec(obj: Mapping[str, Any]) -> VRFSpec:
    """The spec of a raw VRF object (wire form), checked by the same rules the CRD gives
    the API server, the name's length included. Controller and agent both parse with
    this, so neither accepts what the other refuses. Raises `InvalidVRF`."""
    meta = obj.get("metadata") or {}
    try:
        parsed = VRF.model_validate(
            {"metadata": {"name": meta.get("name")}, "spec": obj.get("spec") or {}}
        )
    except pydantic.ValidationError as exc:
        raise InvalidVRF(
            "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'object'}: {e['msg']}"
                for e in exc.errors()
            )
        ) from None
    return parsed.spec


class VRF(common.Resource):
    """A VRF-lite virtual router realized on the selected nodes."""

    model_config = ConfigDict(json_schema_extra=common.cel(NAME_RULE))

    @model_validator(mode="after")
    def _name_fits(self) -> Self:
        check_name(self.metadata.name)
        return self

    kind: Literal["VRF"] = "VRF"
    """Always VRF."""
    spec: VRFSpec
    """Desired VRF."""
    status: VRFStatus | None = None
    """Observed state."""
