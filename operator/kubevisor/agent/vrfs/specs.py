"""Shapes the node side reports for a VRF, as the API server carries them.

The spec side has no copy here: the agent parses ``spec`` with the API model
(``kubevisor.api.vrfs.VRFSpec``), the same one the controller and the CRD use. What
stays are the realizer's read-back shapes (camelCase keys of ``status.nodes.<node>``);
a unit test (tests/unit/vrf/test_specs_aligned.py) fails when they drift from the model.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from kubevisor.api import vrfrouting, vrfs

Backend = vrfs.Backend
RealBackend = vrfs.RealBackend
RouteType = vrfs.RouteType


class UsageStatus(TypedDict):
    """Resource usage of the VRF's context as read from its cgroup."""

    cpuSeconds: float
    memoryBytes: int


class SessionStatus(TypedDict):
    """One routing session of the daemon (None values are cleared on the wire)."""

    name: str
    protocol: vrfrouting.SessionProtocol
    up: bool
    state: str | None
    neighbor: str | None
    adjacencies: int | None
    routes: int | None


class DaemonStatus(TypedDict):
    """The VRF's routing daemon on this node (None values are cleared on the wire)."""

    name: str
    version: str | None
    state: vrfrouting.DaemonState
    pid: int | None
    restarts: int | None
    configHash: str | None
    sessions: NotRequired[list[SessionStatus]]
    sessionsUp: NotRequired[int]
    sessionsTotal: NotRequired[int]
    routesLearned: NotRequired[int]
    routes: NotRequired[int | None]


class NodeVRFStatus(TypedDict):
    """What one node reports for one VRF: level-based, read back from the kernel.

    ``reason`` is a CamelCase `conditions.Reason` when not ready, else None.
    """

    backend: str
    table: int
    interfaces: list[str]
    routesInstalled: int
    ready: bool
    reason: str | None
    message: str
    usage: NotRequired[UsageStatus]
    daemon: NotRequired[DaemonStatus]
