"""The agent's decision table: desired power state x domain state x reported phase."""

from __future__ import annotations

import pytest

from kubevisor.agent.reconciling import Action as A
from kubevisor.agent.reconciling import DomainView, Observed, Plan, decide

pytestmark = pytest.mark.unit

RUNNING = DomainView("running")
PAUSED = DomainView("paused")
OFF = DomainView("shutoff")
GUEST_OFF = DomainView("shutoff", guest_shut_down=True)
CRASHED = DomainView("crashed")
GOING = DomainView("shutting-down")

CASES: list[tuple[str, Observed, Plan]] = [
    # Nothing to realize until the controller resolved and decided.
    ("no desired", Observed(desired=None), Plan()),
    ("no machine", Observed(desired="Running", has_machine=False), Plan()),
    # Start.
    ("new vm", Observed("Running"), Plan((A.ENSURE, A.START), "Running")),
    ("new paused vm", Observed("Paused"), Plan((A.ENSURE, A.START, A.SUSPEND), "Paused")),
    (
        "defined, never started",
        Observed("Running", phase=None, domain=OFF),
        Plan((A.ENSURE, A.START), "Running"),
    ),
    (
        "stopped, wanted again",
        Observed("Running", phase="Stopped", domain=OFF),
        Plan((A.ENSURE, A.START), "Running"),
    ),
    # Steady state and adoption: no action, phase corrected.
    ("running", Observed("Running", phase="Running", domain=RUNNING), Plan((), "Running")),
    ("adopt running", Observed("Running", phase=None, domain=RUNNING), Plan((), "Running")),
    ("adopt paused", Observed("Paused", phase="Running", domain=PAUSED), Plan((), "Paused")),
    # Pause / resume.
    ("pause", Observed("Paused", phase="Running", domain=RUNNING), Plan((A.SUSPEND,), "Paused")),
    ("resume", Observed("Running", phase="Paused", domain=PAUSED), Plan((A.RESUME,), "Running")),
    # Guest stopped on its own: report, never restart by ourselves.
    (
        "guest powered off",
        Observed("Running", phase="Running", domain=GUEST_OFF),
        Plan((), "Succeeded"),
    ),
    ("qemu died", Observed("Running", phase="Running", domain=OFF), Plan((), "Failed")),
    ("crashed", Observed("Running", phase="Paused", domain=CRASHED), Plan((), "Failed")),
    ("reported, waiting", Observed("Running", phase="Succeeded", domain=GUEST_OFF), Plan()),
    ("failed, waiting", Observed("Running", phase="Failed", domain=OFF), Plan()),
    (
        "shutting down by itself",
        Observed("Running", phase="Running", domain=GOING),
        Plan(requeue=True),
    ),
    # Graceful stop: ACPI, wait, destroy after the timeout.
    (
        "stop: ask",
        Observed("Stopped", phase="Running", domain=RUNNING),
        Plan((A.SHUTDOWN,), "Stopping", requeue=True),
    ),
    (
        "stop: waiting",
        Observed("Stopped", phase="Stopping", domain=GOING, shutdown_requested=True),
        Plan((), "Stopping", requeue=True),
    ),
    (
        "stop: timed out",
        Observed(
            "Stopped",
            phase="Stopping",
            domain=RUNNING,
            shutdown_requested=True,
            shutdown_timed_out=True,
        ),
        Plan((A.DESTROY,), "Stopping", requeue=True),
    ),
    ("stop: done", Observed("Stopped", phase="Stopping", domain=GUEST_OFF), Plan((), "Stopped")),
    ("stopped, no domain", Observed("Stopped"), Plan((), "Stopped")),
    ("stop keeps Succeeded", Observed("Stopped", phase="Succeeded", domain=GUEST_OFF), Plan()),
    (
        "stop paused",
        Observed("Stopped", phase="Paused", domain=PAUSED),
        Plan((A.SHUTDOWN,), "Stopping", requeue=True),
    ),
    # Restart: graceful stop first, then start and record the token.
    (
        "restart: stop",
        Observed("Running", restart_pending=True, phase="Running", domain=RUNNING),
        Plan((A.SHUTDOWN,), "Stopping", requeue=True),
    ),
    (
        "restart: start",
        Observed("Running", restart_pending=True, phase="Stopping", domain=OFF),
        Plan((A.ENSURE, A.START, A.APPLY_RESTART), "Running"),
    ),
    (
        "rerun after failure",
        Observed("Running", restart_pending=True, phase="Failed", domain=OFF),
        Plan((A.ENSURE, A.START, A.APPLY_RESTART), "Running"),
    ),
    # Delete: destroy, undefine, clean up; whatever is left.
    (
        "delete running",
        Observed("Running", deleting=True, domain=RUNNING),
        Plan((A.DESTROY, A.UNDEFINE, A.CLEANUP)),
    ),
    ("delete off", Observed("Stopped", deleting=True, domain=OFF), Plan((A.UNDEFINE, A.CLEANUP))),
    ("delete never realized", Observed(None, deleting=True), Plan((A.CLEANUP,))),
]


@pytest.mark.parametrize(
    ("observed", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide(observed: Observed, expected: Plan) -> None:
    assert decide(observed) == expected


def test_decisions_are_idempotent_once_converged() -> None:
    """After the actions of a Running plan, the next look asks for nothing."""
    assert decide(Observed("Running", phase="Running", domain=RUNNING)).actions == ()
    assert decide(Observed("Paused", phase="Paused", domain=PAUSED)).actions == ()
    assert decide(Observed("Stopped", phase="Stopped", domain=OFF)).actions == ()
