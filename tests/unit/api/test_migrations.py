"""Migration status shape and the node contract's migration facts (CPU models, RTTs)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from kubevisor.api import migrations, nodes

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
P = migrations.MigrationPhase


def test_enter_phase_stamps_once_in_order() -> None:
    seen = migrations.enter_phase([], P.PENDING, now=T0)
    seen = migrations.enter_phase(seen, P.SCHEDULING, now=T0 + timedelta(seconds=1))
    again = migrations.enter_phase(seen, P.PENDING, now=T0 + timedelta(seconds=9))
    assert again == seen, "re-entering a phase must not move its timestamp"
    assert [(t.phase, t.time) for t in again] == [
        (P.PENDING, T0),
        (P.SCHEDULING, T0 + timedelta(seconds=1)),
    ]


def test_status_wire_form() -> None:
    status = migrations.MigrationStatus(
        phase=P.SUCCEEDED,
        phase_transitions=migrations.enter_phase([], P.RUNNING, now=T0),
        progress=migrations.MigrationProgress(percent=100, eta_seconds=0),
        mode=migrations.MigrationMode.POST_COPY,
        downtime_ms=12,
    )
    assert status.to_json() == {
        "phase": "Succeeded",
        "phaseTransitions": [{"phase": "Running", "time": "2026-01-01T00:00:00Z"}],
        "progress": {"percent": 100, "etaSeconds": 0},
        "mode": "PostCopy",
        "downtimeMs": 12,
    }
    assert migrations.MigrationStatus.model_validate(status.to_json()) == status


def test_phase_sets() -> None:
    assert migrations.FINAL_PHASES.isdisjoint(migrations.ACTIVE_PHASES)
    assert P.PENDING not in migrations.ACTIVE_PHASES | migrations.FINAL_PHASES
    assert set(P) == migrations.ACTIVE_PHASES | migrations.FINAL_PHASES | {P.PENDING}


def test_reasons_match_the_crd_reason_pattern_and_are_unique() -> None:
    import re

    from kubevisor.api import conditions

    values = [r.value for r in migrations.MigrationReason]
    assert len(values) == len(set(values))
    assert all(re.match(conditions.REASON_PATTERN, v) for v in values)


def test_capacity_omits_unreported_cpu_facts_and_round_trips_them() -> None:
    plain = nodes.Capacity(cpu=2)
    assert "cpuModels" not in json.loads(nodes.capacity_json(plain))
    assert "hostCPUModel" not in json.loads(nodes.capacity_json(plain))
    full = nodes.Capacity(cpu=2, cpu_models=("qemu64", "Haswell"), host_cpu_model="Skylake")
    wire = json.loads(nodes.capacity_json(full))
    assert (wire["cpuModels"], wire["hostCPUModel"]) == (["Haswell", "qemu64"], "Skylake")
    assert nodes.parse_capacity(nodes.capacity_json(full)).host_cpu_model == "Skylake"


@pytest.mark.parametrize(
    ("text", "rtts"),
    [
        (None, {}),
        ("nonsense", {}),
        ("[1]", {}),
        ('{"n2": 0.4, "n3": "slow", "n4": -1, "n5": true, "n6": 3}', {"n2": 0.4, "n6": 3.0}),
    ],
)
def test_parse_rtts(text: str | None, rtts: dict[str, float]) -> None:
    assert nodes.parse_rtts(text) == rtts


def _lease(rtts: dict[str, float] | None) -> dict[str, object]:
    return nodes.lease_body(
        node="n1", labels={}, capacity=nodes.Capacity(), segments=(), now=T0, rtts=rtts
    )


def _renewal(current: dict[str, object], rtts: dict[str, float] | None) -> dict[str, object]:
    return nodes.renewal_patch(
        current=current,
        node="n1",
        labels={},
        capacity=nodes.Capacity(),
        segments=(),
        now=T0 + timedelta(seconds=10),
        rtts=rtts,
    )


def test_rtts_annotation_only_when_given() -> None:
    body = _lease(None)
    assert nodes.ANNOTATION_RTTS not in body["metadata"]["annotations"]  # type: ignore[index]
    assert nodes.parse(body).rtts_ms == {}
    with_rtts = _lease({"n2": 0.4567})
    assert with_rtts["metadata"]["annotations"][nodes.ANNOTATION_RTTS] == '{"n2":0.46}'  # type: ignore[index]
    assert nodes.parse(with_rtts).rtts_ms == {"n2": 0.46}
    assert "metadata" not in _renewal(with_rtts, None), "rtts=None leaves the annotation alone"
    assert "metadata" not in _renewal(with_rtts, {"n2": 0.46})
    changed = _renewal(with_rtts, {"n2": 5.0})
    assert changed["metadata"] == {"annotations": {nodes.ANNOTATION_RTTS: '{"n2":5.0}'}}
