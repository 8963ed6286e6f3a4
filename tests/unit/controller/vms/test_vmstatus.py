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


@pytest.mark.parametrize(
    ("conds", "reason"),
    [
        (
            {
                "Scheduled": Cond("False", "Unschedulable", "no node has 64Gi free"),
                "TemplateResolved": Cond("True", "AsExpected", "ok"),
                "RestartRequired": Cond("False", "AsExpected", ""),
            },
            "Unschedulable",
        ),
        (
            {
                "Scheduled": Cond("False", "Unschedulable", "waiting for the machine"),
                "TemplateResolved": Cond("False", "TemplateNotFound", "VMTemplate t not found"),
                "RestartRequired": Cond("False", "AsExpected", ""),
            },
            "TemplateNotFound",
        ),
        (
            {
                "Scheduled": Cond("False", "Stopped", "not placed: the VM is not asked to run"),
                "TemplateResolved": Cond("True", "AsExpected", "ok"),
                "RestartRequired": Cond("False", "AsExpected", ""),
            },
            "Stopped",
        ),
    ],
)
def test_an_unplaced_vm_has_ready_from_its_first_write(conds: dict[str, Cond], reason: str) -> None:
    """Issue 9: Ready on every kind from the first status write; while no agent has the VM
    the controller writes it (False, the reason keeping it off a node), and stops owning it
    once placed (the agent's then)."""
    first = _build({}, node=None, phase="Pending", conds=conds)
    ready = [c for c in first["conditions"] if c["type"] == "Ready"]  # type: ignore[union-attr]
    assert len(ready) == 1 and ready[0]["status"] == "False" and ready[0]["reason"] == reason
    assert ready[0]["message"] == next(c.message for c in conds.values() if c.reason == reason)
    assert vmstatus.same(first, _build(first, node=None, phase="Pending", conds=conds))
    placed = _build(first, node="n1", phase=None, conds=CONDS)
    assert "Ready" not in [c["type"] for c in placed["conditions"]]  # type: ignore[union-attr]
    assert not vmstatus.same(first, placed)
