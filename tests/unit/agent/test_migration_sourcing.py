"""The source agent's migration decision: phase x own report x libvirt (restart cases)."""

from __future__ import annotations

import pytest

from kubevisor.agent.migrations.sourcing import Action as A
from kubevisor.agent.migrations.sourcing import (
    Observed,
    Plan,
    Reason,
    Report,
    State,
    decide,
    failure_reason,
    progress_due,
    restart_failure,
    should_switch_post_copy,
)
from kubevisor.api.migrations import MigrationProgress

pytestmark = pytest.mark.unit

N = "node-1"


def obs(phase: str | None, **kw: object) -> Observed:
    return Observed(node=N, phase=phase, **kw)  # type: ignore[arg-type]


CASES: list[tuple[str, Observed, Plan]] = [
    ("not yet", obs("PreparingTarget", domain_active=True), Plan()),
    (
        "target ready: start",
        obs("TargetReady", domain_active=True),
        Plan(A.START, report=Report(State.MIGRATING)),
    ),
    ("target ready but cancelled", obs("TargetReady", cancel=True, domain_active=True), Plan()),
    ("target ready but deleting", obs("TargetReady", deleting=True, domain_active=True), Plan()),
    (
        "target ready, no domain here",
        obs("TargetReady"),
        Plan(
            report=Report(
                State.FAILED,
                Reason.MIGRATION_FAILED,
                "the VM's domain is not running on node-1; nothing to migrate",
            )
        ),
    ),
    (
        "driving, steady",
        obs("Running", reported="Migrating", driving=True, domain_active=True, job_active=True),
        Plan(),
    ),
    (
        "driving, cancel",
        obs("Running", reported="Migrating", driving=True, cancel=True, job_active=True),
        Plan(A.ABORT, abort_reason=Reason.CANCELLED),
    ),
    (
        "driving, deleted",
        obs("Running", reported="Migrating", driving=True, deleting=True),
        Plan(A.ABORT, abort_reason=Reason.CANCELLED),
    ),
    (
        "driving, timeout",
        obs("Running", reported="Migrating", driving=True, timed_out=True),
        Plan(A.ABORT, abort_reason=Reason.COMPLETION_TIMEOUT),
    ),
    # A restarted agent: libvirt decides.
    (
        "restart, job active",
        obs("Running", reported="Migrating", domain_active=True, job_active=True),
        Plan(A.ADOPT),
    ),
    (
        "restart, job active, cancel",
        obs("Running", reported="Migrating", domain_active=True, job_active=True, cancel=True),
        Plan(A.ABORT, abort_reason=Reason.CANCELLED),
    ),
    (
        "restart, no job, domain here",
        obs("Running", reported="Migrating", domain_active=True),
        Plan(report=restart_failure(N)),
    ),
    (
        "restart, domain gone",
        obs("Running", reported="Migrating", domain_active=None),
        Plan(report=Report(State.COMPLETED)),
    ),
    # Final reports are final.
    ("completed", obs("Succeeded", reported="Completed"), Plan()),
    ("failed", obs("Failed", reported="Failed", domain_active=True), Plan()),
    ("aborted", obs("Cancelled", reported="Aborted", domain_active=True), Plan()),
    ("never started, failed", obs("Failed", domain_active=True), Plan()),
]


@pytest.mark.parametrize(("observed", "plan"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(observed: Observed, plan: Plan) -> None:
    assert decide(observed) == plan


def test_restart_failure_names_the_node() -> None:
    assert restart_failure(N).message == (
        "agent restarted; libvirt holds no migration job; the VM keeps running on node-1"
    )


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("internal error: unable to connect to server at 'n2:49152'", Reason.TARGET_FAILED),
        ("operation failed: migration out job: Cannot recv data", Reason.TARGET_FAILED),
        ("End of file while reading data: Input/output error", Reason.TARGET_FAILED),
        ("operation failed: migration out job: unexpectedly failed", Reason.MIGRATION_FAILED),
    ],
)
def test_failure_reason(message: str, reason: Reason) -> None:
    assert failure_reason(message) is reason


def p(iteration: int, remaining: int) -> MigrationProgress:
    return MigrationProgress(memory_iterations=iteration, data_remaining_bytes=remaining)


@pytest.mark.parametrize(
    ("post_copy", "samples", "switched", "want"),
    [
        (True, [p(1, 100), p(2, 50), p(3, 20)], False, False),
        (True, [p(1, 100), p(2, 50), p(3, 60)], False, True),
        (True, [p(1, 100), p(2, 50), p(2, 10), p(3, 50)], False, True),
        (False, [p(1, 100), p(2, 50), p(3, 60)], False, False),
        (True, [p(1, 100), p(2, 50), p(3, 60)], True, False),
        (True, [p(1, 100), p(2, 150)], False, False),
    ],
)
def test_post_copy_switch(
    post_copy: bool, samples: list[MigrationProgress], switched: bool, want: bool
) -> None:
    assert should_switch_post_copy(post_copy, samples, switched=switched) is want


def test_progress_due_about_once_a_second() -> None:
    assert progress_due(None, 5.0)
    assert not progress_due(5.0, 5.5)
    assert progress_due(5.0, 6.0)
