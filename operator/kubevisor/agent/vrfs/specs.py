"""Shapes of a VRF spec and of its per-node status, as the API server carries them.

These mirror the CRD (camelCase keys) so the agent can pass the raw object's ``spec`` in
without conversion. ``kubevisor.api.vrfs`` is the source of the schema; a unit test
(tests/unit/vrf/test_specs_aligned.py) fails when these keys drift from its wire names.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

Backend = Literal["auto", "vrf", "netns"]
RealBackend = Literal["vrf", "netns"]
RouteType = Literal["unicast", "blackhole", "unreachable", "prohibit"]


class InterfaceSpec(TypedDict):
    """A member interface: a node segment (``network`` [+ ``vlan``]) or a host interface."""

    name: str
    network: NotRequired[str]
    vlan: NotRequired[int]
    hostInterface: NotRequired[str]
    addresses: NotRequired[list[str]]


class RouteSpec(TypedDict):
    """A static route inside the VRF's table."""

    prefix: str
    via: NotRequired[str]
    device: NotRequired[str]
    type: NotRequired[RouteType]
    metric: NotRequired[int]


class ResourcesSpec(TypedDict, total=False):
    """CPU/memory limits of the VRF's context, as Kubernetes quantities ("500m", "64Mi")."""

    cpu: str
    memory: str


class RoutingSpec(TypedDict, total=False):
    """Optional per-VRF routing daemon."""

    daemon: Literal["none", "bird"]
    config: str


class VRFSpec(TypedDict, total=False):
    """``spec`` of a VRF object."""

    table: int
    interfaces: list[InterfaceSpec]
    routes: list[RouteSpec]
    nodeSelector: dict[str, str]
    backend: Backend
    resources: ResourcesSpec
    routing: RoutingSpec


class UsageStatus(TypedDict):
    """Resource usage of the VRF's context as read from its cgroup."""

    cpuSeconds: float
    memoryBytes: int


class NodeVRFStatus(TypedDict):
    """What one node reports for one VRF: level-based, read back from the kernel."""

    backend: str
    table: int
    interfaces: list[str]
    routesInstalled: int
    ready: bool
    message: str
    usage: NotRequired[UsageStatus]
