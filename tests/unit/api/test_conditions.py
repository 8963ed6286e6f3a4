"""set_condition: transition time moves only on a status flip; Ready sorts first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubevisor.api import conditions

pytestmark = pytest.mark.unit

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
S0 = "2025-01-01T12:00:00Z"
S1 = "2025-01-01T12:05:00Z"


def cond(
    type: str, status: str, *, reason: str = "R", when: str = S0, gen: int = 1
) -> dict[str, Any]:
    return {
        "type": type,
        "status": status,
        "reason": reason,
        "message": "",
        "lastTransitionTime": when,
        "observedGeneration": gen,
    }


CASES = [
    pytest.param([], ("Ready", "True", "R"), [cond("Ready", "True", when=S1, gen=2)], id="add"),
    pytest.param(
        [cond("Ready", "True")],
        ("Ready", "True", "R"),
        [cond("Ready", "True", when=S0, gen=2)],
        id="same-status-keeps-time",
    ),
    pytest.param(
        [cond("Ready", "True")],
        ("Ready", "True", "Other"),
        [cond("Ready", "True", reason="Other", when=S0, gen=2)],
        id="reason-change-keeps-time",
    ),
    pytest.param(
        [cond("Ready", "True")],
        ("Ready", "False", "R"),
        [cond("Ready", "False", when=S1, gen=2)],
        id="flip-moves-time",
    ),
    pytest.param(
        [cond("Ready", "Unknown")],
        ("Ready", "True", "R"),
        [cond("Ready", "True", when=S1, gen=2)],
        id="unknown-to-true-moves-time",
    ),
    pytest.param(
        [cond("Scheduled", "True")],
        ("Ready", "False", "R"),
        [cond("Ready", "False", when=S1, gen=2), cond("Scheduled", "True")],
        id="ready-goes-first",
    ),
    pytest.param(
        [cond("Ready", "True"), cond("Scheduled", "True")],
        ("DisksReady", "True", "R"),
        [
            cond("Ready", "True"),
            cond("DisksReady", "True", when=S1, gen=2),
            cond("Scheduled", "True"),
        ],
        id="others-alphabetical",
    ),
    pytest.param(
        [cond("Scheduled", "True"), cond("Ready", "True")],
        ("Scheduled", "True", "R"),
        [cond("Ready", "True"), cond("Scheduled", "True", when=S0, gen=2)],
        id="reorders-existing",
    ),
]


@pytest.mark.parametrize(("before", "change", "after"), CASES)
def test_set_condition(
    before: list[dict[str, Any]],
    change: tuple[str, conditions.ConditionStatus, str],
    after: list[dict[str, Any]],
) -> None:
    type_, status, reason = change
    snapshot = [dict(c) for c in before]
    result = conditions.set_condition(
        before,
        type=type_,
        status=status,
        reason=reason,
        message="",
        generation=2,
        now=T1,
    )
    assert result == after
    assert before == snapshot, "input must not be modified"


def test_set_condition_without_generation_omits_it() -> None:
    result = conditions.set_condition(
        [], type="Ready", status="True", reason="R", message="m", generation=None, now=T0
    )
    assert "observedGeneration" not in result[0]


def test_set_condition_accepts_enum_members() -> None:
    result = conditions.set_condition(
        [],
        type=conditions.ConditionType.READY,
        status="False",
        reason=conditions.Reason.TEMPLATE_NOT_FOUND,
        message="VMTemplate 'tiny' not found.",
        generation=3,
        now=T0,
    )
    assert result[0]["type"] == "Ready" and result[0]["reason"] == "TemplateNotFound"
    assert type(result[0]["reason"]) is str
    conditions.Condition.model_validate(result[0])


def test_naive_time_is_taken_as_utc() -> None:
    assert conditions.format_time(datetime(2025, 1, 1, 12, 0, 0)) == S0


def test_helpers() -> None:
    conds = [cond("Ready", "True"), cond("Scheduled", "False")]
    assert conditions.is_true(conds, "Ready")
    assert not conditions.is_true(conds, "Scheduled")
    assert not conditions.is_true(conds, "Missing")
    assert conditions.get_condition(conds, "Scheduled") == conds[1]
    assert conditions.get_condition(conds, "Missing") is None


def test_reasons_are_valid_condition_reasons() -> None:
    import re

    for reason in conditions.Reason:
        assert re.match(conditions.REASON_PATTERN, reason.value), reason
