"""The controller's watch observer: VM phases gauge, start clock, migration figures and
the phase-change Events, fed with watch events as kopf delivers them."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from kubevisor.controller.runtime import observing

pytestmark = pytest.mark.unit


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _obj(phase: str | None, **status: Any) -> dict[str, Any]:
    st = {"phase": phase, **status} if phase is not None else dict(status)
    return {"metadata": {"name": "x", "namespace": "ns", "uid": "u"}, "status": st}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("old", "new", "want"),
    [
        (None, "Running", None),  # not seen before (a restart's listing): no Event
        ("Running", "Running", None),
        ("Pending", "Scheduled", None),  # the VM handler's own Scheduled Event covers it
        ("Running", "Stopping", None),  # transient
        ("Starting", "Running", ("Normal", "Running", "phase Starting -> Running on node n1.")),
        ("", "Running", ("Normal", "Running", "phase none -> Running on node n1.")),
        ("Running", "Failed", ("Warning", "Failed", "phase Running -> Failed on node n1.")),
        ("Running", "Unknown", ("Warning", "Unknown", "phase Running -> Unknown on node n1.")),
        ("Stopping", "Stopped", ("Normal", "Stopped", "phase Stopping -> Stopped on node n1.")),
    ],
)
def test_vm_event(old: str | None, new: str, want: tuple[str, str, str] | None) -> None:
    assert observing.vm_event(old, new, "n1") == want


@pytest.mark.parametrize(
    ("old", "new", "want"),
    [
        (None, "Ready", None),
        ("Ready", "Ready", None),
        ("Provisioning", "Ready", ("Normal", "Ready", "realized on 2/2 nodes.")),
        ("Ready", "Degraded", None),  # the VRF handler warns with the reason
    ],
)
def test_vrf_event(old: str | None, new: str, want: tuple[str, str, str] | None) -> None:
    assert observing.vrf_event(old, new, "2/2") == want


async def test_vm_phases_gauge_start_clock_and_events() -> None:
    clock, posted = Clock(), []
    obs = observing.Observer(post=lambda obj, **kw: posted.append(kw), clock=clock)
    running0 = _sample("kubevisor_controller_vms", phase="Running")
    pending0 = _sample("kubevisor_controller_vms", phase="Pending")
    starts0 = _sample("kubevisor_controller_vm_start_seconds_count")
    sum0 = _sample("kubevisor_controller_vm_start_seconds_sum")
    await obs.on_vm("ADDED", "ns", "a", _obj(None))
    clock.now += 1
    await obs.on_vm("MODIFIED", "ns", "a", _obj("Pending"))
    assert _sample("kubevisor_controller_vms", phase="Pending") == pending0 + 1
    clock.now += 2
    await obs.on_vm("MODIFIED", "ns", "a", _obj("Running", nodeName="n1"))
    assert _sample("kubevisor_controller_vms", phase="Pending") == pending0
    assert _sample("kubevisor_controller_vms", phase="Running") == running0 + 1
    # timed from the first event on the way to Running (ADDED), once
    assert _sample("kubevisor_controller_vm_start_seconds_count") == starts0 + 1
    assert _sample("kubevisor_controller_vm_start_seconds_sum") == pytest.approx(sum0 + 3)
    assert posted == [
        {
            "kind": "VirtualMachine",
            "type_": "Normal",
            "reason": "Running",
            "message": "phase Pending -> Running on node n1.",
        }
    ]
    await obs.on_vm("MODIFIED", "ns", "a", _obj("Running", nodeName="n1"))
    assert _sample("kubevisor_controller_vm_start_seconds_count") == starts0 + 1
    await obs.on_vm("DELETED", "ns", "a", _obj("Running"))
    assert _sample("kubevisor_controller_vms", phase="Running") == running0
    # seen Running in a restart's initial listing: counted, not timed, no Event
    await obs.on_vm(None, "ns", "b", _obj("Running"))
    assert _sample("kubevisor_controller_vm_start_seconds_count") == starts0 + 1
    assert len(posted) == 1
    await obs.on_vm("DELETED", "ns", "b", _obj("Running"))


async def test_migration_figures_observed_once_and_not_for_the_initial_listing() -> None:
    obs = observing.Observer()
    ok0 = _sample("kubevisor_controller_migrations_total", phase="Succeeded")
    count0 = _sample("kubevisor_controller_migration_duration_seconds_count")
    down0 = _sample("kubevisor_controller_migration_downtime_seconds_sum")
    done = _obj("Succeeded", totalTimeMs=4200, downtimeMs=120)
    await obs.on_migration(None, "ns", "old", done)  # finished before this process
    await obs.on_migration("MODIFIED", "ns", "m", _obj("Running"))
    await obs.on_migration("MODIFIED", "ns", "m", done)
    await obs.on_migration("MODIFIED", "ns", "m", done)  # a later write: not again
    await obs.on_migration("MODIFIED", "ns", "old", done)
    assert _sample("kubevisor_controller_migrations_total", phase="Succeeded") == ok0 + 1
    assert _sample("kubevisor_controller_migration_duration_seconds_count") == count0 + 1
    assert _sample("kubevisor_controller_migration_downtime_seconds_sum") == pytest.approx(
        down0 + 0.12
    )
    failed0 = _sample("kubevisor_controller_migrations_total", phase="Failed")
    await obs.on_migration("MODIFIED", "ns", "f", _obj("Failed"))
    assert _sample("kubevisor_controller_migrations_total", phase="Failed") == failed0 + 1
    assert _sample("kubevisor_controller_migration_duration_seconds_count") == count0 + 1
