"""bench/nodeloss.py's pure parts: the result and its table."""

from __future__ import annotations

import json

import pytest

from . import load

pytestmark = pytest.mark.unit

nodeloss = load("nodeloss")


def test_result_reports_the_target_without_asserting_it() -> None:
    times = {"node_lost": 24.04, "fenced": 24.6, "recovery_recorded": 25.1,
             "running_elsewhere": 31.26, "booted_elsewhere": 33.0}  # fmt: skip
    res = nodeloss.result(times, {"lease_duration": 30.0})
    assert res["milestones_s"]["running_elsewhere"] == 31.26
    assert res["met"] is True
    assert nodeloss.result({**times, "running_elsewhere": 50.0}, {})["met"] is False
    assert nodeloss.result({"node_lost": 24.0}, {})["met"] is False
    json.dumps(res)  # one JSON line


def test_table_lists_every_milestone_in_order() -> None:
    res = nodeloss.result({"node_lost": 24.0}, {"lease_duration": 30.0})
    lines = nodeloss.table(res).splitlines()
    names = [line.split()[0] for line in lines[1 : 1 + len(nodeloss.MILESTONES)]]
    assert names == list(nodeloss.MILESTONES)
    assert "-" in lines[2]  # fenced: not reached
    assert lines[-1].endswith("no")
