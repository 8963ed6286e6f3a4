"""Table tests for the Migration reconciler's decision over the agents' reports
(controller/migrations/progressing): the phase a restarted controller recomputes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubevisor.api import groups, migrations
from kubevisor.api.migrations import MigrationPhase as Phase
from kubevisor.api.migrations import SourceState, TargetState
from kubevisor.controller.migrations import progressing
from kubevisor.devenv.testing import fake_node_lease

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def lease(name: str, *, alive: bool) -> dict[str, Any]:
    raw = fake_node_lease(name, capacity={"cpu": 4, "memoryBytes": 8 << 30})
    renew = NOW if alive else NOW - timedelta(hours=2)
    raw["spec"]["renewTime"] = renew.isoformat().replace("+00:00", "Z")
    return raw


def inputs(
    phase: Phase,
    *,
    source: SourceState | None = None,
    target: TargetState | None = None,
    domain_active: bool | None = None,
    cancel: bool = False,
    target_alive: bool = True,
    entered: datetime = NOW,
) -> progressing.Inputs:
    status: dict[str, Any] = {
        "phase": phase.value,
        "phaseTransitions": [{"phase": phase.value, "time": entered.isoformat()}],
        "sourceNode": "node-1",
        "targetNode": "node-2",
    }
    if source is not None:
        status["source"] = {"node": "node-1", "state": source.value, "message": "m"}
    if target is not None or domain_active is not None:
        status["target"] = {
            "node": "node-2",
            "state": (target or TargetState.READY).value,
            "domainActive": domain_active,
        }
    mig = migrations.Migration.model_validate(
        {
            "apiVersion": "kubevisor.io/v1alpha1",
            "kind": "Migration",
            "metadata": {"name": "m1", "namespace": "default"},
            "spec": {"vmName": "vm1", "cancel": cancel},
            "status": status,
        }
    )
    return progressing.Inputs(
        migration=mig,
        labels={},
        finalizers=[],
        deleting=False,
        vm=None,
        vm_labels={},
        leases=[lease("node-1", alive=True), lease("node-2", alive=target_alive)],
        used={},
        wait=None,
        now=NOW,
    )


CASES = [
    # (phase, reports..., expected phase, expected Ready reason or None)
    (inputs(Phase.PREPARING_TARGET, target=TargetState.READY), Phase.TARGET_READY),
    (inputs(Phase.PREPARING_TARGET), Phase.PREPARING_TARGET),
    (inputs(Phase.PREPARING_TARGET, target=TargetState.FAILED), Phase.FAILED),
    (inputs(Phase.PREPARING_TARGET, target_alive=False), Phase.FAILED),
    (inputs(Phase.PREPARING_TARGET, cancel=True), Phase.CANCELLED),
    (
        inputs(Phase.PREPARING_TARGET, entered=NOW - timedelta(seconds=301)),
        Phase.FAILED,
    ),
    (inputs(Phase.TARGET_READY, source=SourceState.MIGRATING), Phase.RUNNING),
    (inputs(Phase.RUNNING, source=SourceState.MIGRATING), Phase.RUNNING),
    (inputs(Phase.RUNNING, source=SourceState.COMPLETED), Phase.SUCCEEDED),
    # a restarted source lost track, but the target runs the domain: it moved
    (inputs(Phase.RUNNING, source=SourceState.FAILED, domain_active=True), Phase.SUCCEEDED),
    (inputs(Phase.RUNNING, source=SourceState.FAILED), Phase.FAILED),
    (inputs(Phase.RUNNING, source=SourceState.ABORTED, cancel=True), Phase.CANCELLED),
    (inputs(Phase.RUNNING, source=SourceState.ABORTED), Phase.FAILED),
]


@pytest.mark.parametrize(("inp", "want"), CASES)
def test_phase_from_reports(inp: progressing.Inputs, want: Phase) -> None:
    assert progressing.decide(inp).phase is want


@pytest.mark.parametrize(
    ("inp", "reason"),
    [
        (inputs(Phase.RUNNING, source=SourceState.FAILED), "MigrationFailed"),
        (inputs(Phase.RUNNING, source=SourceState.FAILED, target_alive=False), "TargetFailed"),
        (inputs(Phase.PREPARING_TARGET, target_alive=False), "TargetFailed"),
        (
            inputs(Phase.PREPARING_TARGET, entered=NOW - timedelta(seconds=301)),
            "CompletionTimeout",
        ),
    ],
)
def test_failure_reasons(inp: progressing.Inputs, reason: str) -> None:
    decision = progressing.decide(inp)
    assert decision.phase is Phase.FAILED
    assert decision.conds[progressing.READY].reason == reason
    assert decision.completed_at == NOW


def test_final_phase_is_stamped_once_and_never_left() -> None:
    done = progressing.decide(inputs(Phase.RUNNING, source=SourceState.COMPLETED))
    assert [t.phase for t in done.transitions][-1] is Phase.SUCCEEDED
    again = inputs(Phase.SUCCEEDED, source=SourceState.COMPLETED)
    assert progressing.decide(again).phase is Phase.SUCCEEDED


def _deleting(inp: progressing.Inputs) -> progressing.Inputs:
    return dataclasses.replace(inp, deleting=True, finalizers=[groups.FINALIZER])


def test_deleted_migration_keeps_its_finalizer_while_the_source_migrates() -> None:
    d = progressing.decide(_deleting(inputs(Phase.RUNNING, source=SourceState.MIGRATING)))
    assert (d.phase, d.finalizer) == (Phase.RUNNING, None)


def test_deleted_migration_keeps_its_finalizer_until_the_target_cleaned_up() -> None:
    aborted = _deleting(inputs(Phase.RUNNING, source=SourceState.ABORTED, target=TargetState.READY))
    d = progressing.decide(aborted)
    assert (d.phase, d.finalizer) == (Phase.CANCELLED, None)
    cleaned = _deleting(
        inputs(Phase.CANCELLED, source=SourceState.ABORTED, target=TargetState.CLEANED_UP)
    )
    assert progressing.decide(cleaned).finalizer == "remove"
