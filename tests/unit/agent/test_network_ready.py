"""A VM's NetworkReady (``vms.reporting.assemble``): one truthful condition per cause.

A VLAN that cannot leave its node because the kernel lacks 802.1Q is
``NetworkReady=False``, reason ``BackendUnavailable`` — the reason a VRF gets for the same
cause — while the VM itself stays Ready (guests on the node still share the segment). A
managed network is node-local by design: True, with a message saying so. Passes that do
not set up segments keep what the last one found."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kubevisor.agent import segments
from kubevisor.agent.vms import handling, reporting, statuses
from kubevisor.api import conditions, machines

pytestmark = pytest.mark.unit

Phase = statuses.Phase
_NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _machine(vlan: int | None) -> dict[str, Any]:
    nic: dict[str, Any] = {"name": "eth0", "network": "default", "mac": "52:54:00:00:00:01"}
    if vlan is not None:
        nic["vlan"] = vlan
    return {
        "cpu": {"cores": 1},
        "memory": "128Mi",
        "disks": [{"name": "root", "size": "1Gi"}],
        "nics": [nic],
    }


def _scope(
    vlan: int | None, states: list[segments.SegmentState], status: dict[str, Any]
) -> handling.Scope:
    obj = {
        "metadata": {"name": "vm", "namespace": "default", "uid": "u1"},
        "status": {**status, "machine": _machine(vlan)},
    }
    scope = handling.scope_of(("default", "vm"), obj, None)
    assert isinstance(scope.machine, machines.MachineSpec)
    scope.network_states.extend(states)
    return scope


def _segment(vlan: int | None, *, managed: bool = False) -> segments.Segment:
    bridge = segments.managed_bridge_name("default") if managed else "kvbr0"
    return segments.segment_of("default", vlan, {"default": bridge}, ["default"] if managed else [])


NO_8021Q = segments.SegmentState(
    segment=_segment(100),
    uplinked=False,
    message="VLAN 100 on network 'default' stays on this node: 802.1Q not available",
    missing=conditions.Reason.BACKEND_UNAVAILABLE,
)
UPLINKED = segments.SegmentState(segment=_segment(100), uplinked=True)
MANAGED = segments.SegmentState(
    segment=_segment(None, managed=True),
    uplinked=False,
    message="network default is local to this node (no uplink)",
)


def _network_ready(scope: handling.Scope) -> dict[str, Any]:
    report = reporting.assemble(scope, Phase.RUNNING, fresh=None, console_dir=Path("/c"), now="t")
    own = statuses.desired_status(report, current=scope.status, generation=1, now=_NOW)
    got = conditions.get_condition(own["conditions"], conditions.ConditionType.NETWORK_READY)
    ready = conditions.get_condition(own["conditions"], conditions.ConditionType.READY)
    assert ready is not None and ready["status"] == "True"  # the VM runs either way
    assert got is not None
    return got


@pytest.mark.parametrize(
    ("vlan", "states", "status", "reason", "words"),
    [
        (100, [NO_8021Q], "False", "BackendUnavailable", "802.1Q not available"),
        (100, [UPLINKED], "True", "AsExpected", ""),
        (None, [MANAGED], "True", "AsExpected", "local to this node"),
    ],
)
def test_network_ready_says_what_the_segments_are(
    vlan: int | None,
    states: list[segments.SegmentState],
    status: str,
    reason: str,
    words: str,
) -> None:
    got = _network_ready(_scope(vlan, states, {}))
    assert (got["status"], got["reason"]) == (status, reason)
    assert words in got["message"]


def test_a_pass_without_segment_set_up_keeps_the_last_finding() -> None:
    first = _network_ready(_scope(100, [NO_8021Q], {}))
    later = _network_ready(_scope(100, [], {"conditions": [first]}))
    assert (later["status"], later["reason"], later["message"]) == (
        "False",
        "BackendUnavailable",
        first["message"],
    )


@pytest.mark.parametrize(
    ("neighbours", "expected"),
    [
        ([], {}),
        ([("52:54:00:AA:00:01", "10.77.0.150")], {"52:54:00:aa:00:01": "10.77.0.150"}),
        # IPv4 first; link-local, multicast and junk say nothing about the guest
        (
            [
                ("52:54:00:aa:00:01", "fd00::5"),
                ("52:54:00:aa:00:01", "fe80::1"),
                ("52:54:00:aa:00:01", "10.77.0.150"),
            ],
            {"52:54:00:aa:00:01": "10.77.0.150"},
        ),
        ([("52:54:00:aa:00:02", "fe80::2"), ("52:54:00:aa:00:02", "224.0.0.1")], {}),
        ([("52:54:00:aa:00:03", "fd00::7"), ("x", "not-an-ip")], {"52:54:00:aa:00:03": "fd00::7"}),
        # two addresses of one family: the lowest, so the column does not flap
        (
            [("52:54:00:aa:00:04", "10.0.0.9"), ("52:54:00:aa:00:04", "10.0.0.3")],
            {"52:54:00:aa:00:04": "10.0.0.3"},
        ),
    ],
)
def test_guest_addresses_from_the_neighbour_table(
    neighbours: list[tuple[str, str]], expected: dict[str, str]
) -> None:
    assert segments.guest_addresses(neighbours) == expected
