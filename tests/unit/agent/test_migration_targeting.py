"""The target agent's migration decision: phase x own report x placement x domain."""

from __future__ import annotations

import pytest

from kubevisor.agent.migrations.targeting import Action as A
from kubevisor.agent.migrations.targeting import Observed, Plan, decide

pytestmark = pytest.mark.unit


def obs(phase: str | None, **kw: object) -> Observed:
    return Observed(node="node-2", phase=phase, **kw)  # type: ignore[arg-type]


CASES: list[tuple[str, Observed, Plan]] = [
    ("pending", obs("Pending"), Plan()),
    ("scheduling", obs("Scheduling"), Plan()),
    ("prepare", obs("PreparingTarget"), Plan(A.PREPARE)),
    ("restarted: prepare again", obs("TargetReady", reported="Ready"), Plan(A.PREPARE)),
    ("ready", obs("TargetReady", reported="Ready", prepared=True), Plan()),
    ("failed stays", obs("PreparingTarget", reported="Failed"), Plan()),
    (
        "domain arrived",
        obs("Running", reported="Ready", prepared=True, domain_active=True),
        Plan(domain_active=True),
    ),
    (
        "domain active reported",
        obs(
            "Running",
            reported="Ready",
            prepared=True,
            domain_active=True,
            reported_domain_active=True,
        ),
        Plan(),
    ),
    ("succeeded", obs("Succeeded", reported="Ready", domain_active=True), Plan(domain_active=True)),
    ("cancelled: clean", obs("Cancelled", reported="Ready"), Plan(A.CLEAN_UP)),
    ("failed: clean", obs("Failed", reported="Failed"), Plan(A.CLEAN_UP)),
    ("failed, never prepared", obs("Failed"), Plan()),
    ("already clean", obs("Failed", reported="CleanedUp"), Plan()),
    ("placed here: hands off", obs("Failed", reported="Ready", placed_here=True), Plan()),
]


@pytest.mark.parametrize(("observed", "plan"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(observed: Observed, plan: Plan) -> None:
    assert decide(observed) == plan
