"""The Argo CD health checks, run in a real Lua 5.1 runtime (lupa) as Argo CD runs them:
over every case of each kind's health_test.yaml (testdata captured from live clusters),
plus the rules' coverage of the api enums, the generated files' freshness and the doc.
"""

from __future__ import annotations

import typing
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.api import (
    conditions,
    desktopclaims,
    health,
    healthlua,
    kinds,
    migrations,
    rebalancepolicies,
    vmbackups,
    vmbackupschedules,
)
from kubevisor.devenv import argocdhealth, testing

pytestmark = pytest.mark.unit

testing.require_module("lupa")

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "argocd.md"
KIND_NAMES = [k.kind for k in kinds.KINDS]
#: Reason enums of one kind (beside the shared conditions.Reason).
KIND_REASONS: dict[str, type[StrEnum]] = {
    "Migration": migrations.MigrationReason,
    "VMBackup": vmbackups.BackupReason,
    "DesktopClaim": desktopclaims.ClaimReason,
    "RebalancePolicy": rebalancepolicies.RebalanceReason,
    "VMBackupSchedule": vmbackupschedules.ScheduleReason,
}


def _phase_enum(kind: kinds.Kind) -> type[StrEnum]:
    annotation = kind.status_model.model_fields["phase"].annotation
    found = next(a for a in typing.get_args(annotation) if a is not type(None))
    assert issubclass(found, StrEnum)
    return found


def _cases(kind: str) -> list[dict[str, Any]]:
    """The kind's cases; none while nothing was captured (the coverage test says so)."""
    path = argocdhealth.kind_dir(kind) / "health_test.yaml"
    if not path.exists():
        return []
    cases: list[dict[str, Any]] = yaml.safe_load(path.read_text())["tests"]
    return cases


def _all_cases() -> list[tuple[str, dict[str, Any]]]:
    return [(k, c) for k in KIND_NAMES for c in _cases(k)]


def test_every_kind_has_rules_and_a_check() -> None:
    assert [r.kind for r in health.RULES] == KIND_NAMES
    for kind in KIND_NAMES:
        assert (argocdhealth.kind_dir(kind) / "health.lua").is_file(), kind
        assert _cases(kind), f"{kind}: health_test.yaml has no case"


@pytest.mark.parametrize("kind", kinds.KINDS, ids=lambda k: k.kind)
def test_every_phase_is_mapped(kind: kinds.Kind) -> None:
    phases = {str(p) for p in _phase_enum(kind)}
    assert set(health.rules_for(kind.kind).phases) == phases


@pytest.mark.parametrize("kind", sorted(KIND_REASONS))
def test_every_kind_reason_is_degraded_or_waiting(kind: str) -> None:
    rules = health.rules_for(kind)
    reasons = {str(r) for r in KIND_REASONS[kind]}
    assert not rules.degraded & rules.waiting
    assert reasons - rules.degraded - rules.waiting == set()


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_degraded_reasons_are_documented_reasons(kind: str) -> None:
    known = {str(r) for r in conditions.Reason}
    if kind in KIND_REASONS:
        known |= {str(r) for r in KIND_REASONS[kind]}
    assert health.rules_for(kind).degraded - known == set()


def test_generated_files_and_doc_are_current() -> None:
    """health.lua per kind, argocd-cm.yaml and the rules table in docs/argocd.md."""
    problems = healthlua.check(argocdhealth.CUSTOMIZATIONS, doc=DOC)
    assert not problems, "\n".join(problems) + "\nrun hack/gen-argocd"


@pytest.mark.parametrize(
    ("kind", "case"),
    _all_cases(),
    ids=[f"{k}-{c['inputPath'].rsplit('/', 1)[-1]}" for k, c in _all_cases()],
)
def test_health_test_case(kind: str, case: dict[str, Any]) -> None:
    obj = yaml.safe_load((argocdhealth.kind_dir(kind) / case["inputPath"]).read_text())
    assert obj["kind"] == kind
    assert argocdhealth.evaluate(kind, obj) == case["healthStatus"]


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_testdata_is_captured_and_used(kind: str) -> None:
    """Every sample came from a live cluster (the capture's header) and is judged."""
    used = {c["inputPath"] for c in _cases(kind)}
    files = sorted((argocdhealth.kind_dir(kind) / "testdata").glob("*.yaml"))
    assert {f"testdata/{f.name}" for f in files} == used
    for path in files:
        assert path.read_text().startswith("# Captured from a live cluster by "), path


def test_unschedulable_vm_is_degraded_not_progressing() -> None:
    """What Argo CD's KubeVirt check never says: a VM no node fits is Degraded."""
    degraded = [c for c in _cases("VirtualMachine") if c["healthStatus"]["status"] == "Degraded"]
    assert any(c["healthStatus"]["message"].startswith("Unschedulable: ") for c in degraded)


def _vm(phase: str | None, *conds: dict[str, Any], **meta: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": list(conds)}
    if phase is not None:
        status["phase"] = phase
    return {
        "kind": "VirtualMachine",
        "metadata": {"name": "x", "generation": 2, **meta},
        "status": status,
    }


def _cond(type_: str, status: str, reason: str, gen: int = 2) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": "m",
        "observedGeneration": gen,
    }


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (_vm("Running", deletionTimestamp="2026-01-01T00:00:00Z"),
         ("Progressing", "Pending deletion")),
        (_vm(None), ("Progressing", "No phase reported yet")),
        # a refusal computed for an older generation: the spec changed since
        (_vm("Pending", _cond("Scheduled", "False", "Unschedulable", gen=1)),
         ("Progressing", "Pending")),
        (_vm("Pending", _cond("Scheduled", "False", "Unschedulable")),
         ("Degraded", "Unschedulable: m")),
        # NodeLost reports its problem with True
        (_vm("Running", _cond("NodeLost", "True", "AwaitingFence")),
         ("Degraded", "AwaitingFence: m")),
        (_vm("Running", _cond("NodeLost", "False", "AwaitingFence")), ("Healthy", "Running")),
        # RestartRequired=True is not a failure
        (_vm("Running", _cond("RestartRequired", "True", "SpecChanged")), ("Healthy", "Running")),
        (_vm("Stopped", _cond("Scheduled", "False", "Stopped")), ("Suspended", "Stopped")),
        (_vm("Paused"), ("Suspended", "Paused")),
        (_vm("Hibernating"), ("Unknown", "Unknown phase Hibernating")),
        (_vm("Running", _cond("Ready", "True", "Running")), ("Healthy", "Running: m")),
    ],
)  # fmt: skip
def test_rule_order(obj: dict[str, Any], expected: tuple[str, str]) -> None:
    """The order the module docstring of api/health states, on built objects (the
    captured samples above are the real ones)."""
    got = argocdhealth.evaluate("VirtualMachine", obj)
    assert (got["status"], got["message"]) == expected


def test_doc_lists_every_key() -> None:
    text = DOC.read_text()
    for kind in KIND_NAMES:
        assert healthlua.config_key(kind) in text
