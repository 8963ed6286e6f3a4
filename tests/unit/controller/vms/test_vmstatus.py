"""The controller's status: built once, recognised as unchanged, transition times kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kubevisor.api import machines
from kubevisor.controller.vms import status as vmstatus
from kubevisor.controller.vms.status import Cond

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, tzinfo=UTC)
MACHINE = machines.MachineSpec.model_validate({"cpu": {"cores": 1}, "memory": "256Mi"})
CONDS = {
    "Scheduled": Cond("True", "Scheduled", "placed on node n1"),
    "TemplateResolved": Cond("True", "AsExpected", "ok"),
    "RestartRequired": Cond("False", "AsExpected", ""),
}


def _build(current: dict[str, object], now: datetime = NOW, **kw: object) -> dict[str, object]:
    args: dict[str, object] = dict(
        generation=3,
        now=now,
        node="n1",
        machine=MACHINE,
        desired="Running",
        restart_token=None,
        phase=None,
        conds=CONDS,
    )
    args.update(kw)
    return vmstatus.build(current, **args)  # type: ignore[arg-type]


def test_build_then_same_is_idempotent() -> None:
    first = _build({})
    assert first["nodeName"] == "n1" and first["desiredState"] == "Running"
    assert first["restartRequired"] is False and "phase" not in first
    # The agent's fields and conditions next to ours do not count as a change.
    seen = {
        **first,
        "phase": "Running",
        "conditions": [
            *first["conditions"],  # type: ignore[list-item]
            {"type": "Ready", "status": "True", "reason": "Running", "message": ""},
        ],
    }
    again = _build(seen, now=NOW + timedelta(minutes=5))
    assert vmstatus.same(seen, again)
    assert [c["type"] for c in again["conditions"]] == [  # type: ignore[union-attr]
        "RestartRequired",
        "Scheduled",
        "TemplateResolved",
    ]


def test_change_is_detected_and_transition_time_moves_only_on_flip() -> None:
    first = _build({})
    flipped = _build(
        first,
        now=NOW + timedelta(minutes=1),
        conds={**CONDS, "RestartRequired": Cond("True", "SpecChanged", "memory changed")},
    )
    assert not vmstatus.same(first, flipped)
    times = {c["type"]: c["lastTransitionTime"] for c in flipped["conditions"]}  # type: ignore[union-attr]
    assert times["Scheduled"] == "2025-01-01T00:00:00Z"
    assert times["RestartRequired"] == "2025-01-01T00:01:00Z"
    assert flipped["restartRequired"] is True


def test_machine_with_server_defaults_is_the_same() -> None:
    first = _build({})
    stored = dict(first)
    stored["machine"] = {**first["machine"], "boot": {"firmware": "bios"}}  # type: ignore[dict-item]
    assert vmstatus.same(stored, _build(stored))


def test_phase_only_while_unplaced() -> None:
    pending = _build({}, node=None, phase="Pending")
    assert pending["phase"] == "Pending" and "nodeName" not in pending
