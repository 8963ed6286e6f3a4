"""bench/migration.py's pure parts: virsh jobinfo parsing, medians, targets, table/JSON."""

from __future__ import annotations

import json

import pytest

from . import load

pytestmark = pytest.mark.unit

migration = load("migration")

JOBINFO = """Job type:         Completed
Operation:        Outgoing migration
Time elapsed:     1234         ms
Time elapsed w/o network: 1230         ms
Data processed:   88.500 MiB
Data remaining:   0.000 B
Total downtime:   42           ms
Downtime w/o network: 40           ms
"""


def test_parse_jobinfo() -> None:
    assert migration.parse_jobinfo(JOBINFO) == {
        "total_ms": 1234.0,
        "downtime_ms": 42.0,
        "bytes": 88.5 * 1024**2,
    }
    assert migration.parse_jobinfo("") == {}


def test_summarise_medians_and_missing() -> None:
    rounds = [{"wall_ms": 1.0, "downtime_ms": 5.0}, {"wall_ms": 3.0}, {"wall_ms": 2.0}]
    assert migration.summarise(rounds) == {
        "wall_ms": 2.0,
        "total_ms": None,
        "downtime_ms": 5.0,
        "bytes": None,
    }


RAW = {"wall_ms": 1000.0, "total_ms": 900.0, "downtime_ms": 30.0, "bytes": 1.0}


@pytest.mark.parametrize(
    ("case", "ours", "expected"),
    [
        (
            "idle-256",
            None,
            {"ratio": None, "ratio_met": None, "downtime_met": None, "converged": None},
        ),
        (
            "idle-256",
            {"wall_ms": 1400.0, "downtime_ms": 40, "succeeded": True},
            {"ratio": 1.4, "ratio_met": True, "downtime_met": True, "converged": None},
        ),
        (
            "idle-256",
            {"wall_ms": 1600.0, "downtime_ms": 60, "succeeded": True},
            {"ratio": 1.6, "ratio_met": False, "downtime_met": False, "converged": None},
        ),
        (
            "dirty-1024",
            {"wall_ms": 5000.0, "downtime_ms": 45, "succeeded": False},
            {"ratio": 5.0, "ratio_met": None, "downtime_met": True, "converged": False},
        ),
    ],
    ids=["ours-unavailable", "idle-met", "idle-missed", "dirty-not-converged"],
)
def test_targets(case: str, ours: dict[str, float] | None, expected: dict[str, object]) -> None:
    assert migration.targets(case, RAW, ours) == expected


def test_table_says_ours_not_available_and_json_round_trips() -> None:
    raw = migration.summarise([RAW])
    results = [
        {
            "case": "idle-256",
            "raw": raw,
            "ours": None,
            "targets": migration.targets("idle-256", raw, None),
        }
    ]
    text = migration.table(results)
    assert migration.NOT_AVAILABLE in text
    assert "1000" in text and "30" in text
    assert json.loads(json.dumps(results)) == results
