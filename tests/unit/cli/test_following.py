"""The one Follower both ``kubevisor migrate`` and ``kubevisor backup`` print through."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import pytest

from kubevisor.cli import following

pytestmark = pytest.mark.unit


def _why(status: Mapping[str, Any]) -> str | None:
    return status.get("why")


def _line(progress: Mapping[str, Any]) -> str:
    return following.bar(progress.get("percent"), width=4)


HEAD = "phase Pending\n  waiting: busy\nphase Running\n"


@pytest.mark.parametrize(
    ("tty", "expected"),
    [
        (False, f"{HEAD}[##..]  50%\n[####] 100%\nphase Succeeded\n"),
        (True, f"{HEAD}\r[##..]  50%\r[####] 100%\nphase Succeeded\n"),
    ],
)
def test_prints_only_what_changed(tty: bool, expected: str) -> None:
    out = io.StringIO()
    f = following.Follower(out, tty=tty, why=_why, progress_line=_line)
    for status in (
        {"phase": "Pending"},  # nothing to say yet: no waiting line
        {"phase": "Pending", "why": "busy"},
        {"phase": "Pending", "why": "busy"},
        {"phase": "Running", "progress": {"percent": 50}},
        {"phase": "Running", "progress": {"percent": 50}},
        {"phase": "Running", "progress": {"percent": 100}},
        {"phase": "Succeeded", "progress": {"percent": 100}},
    ):
        f.show(status)
    f.end_line()
    assert out.getvalue() == expected


@pytest.mark.parametrize(("percent", "bar"), [(None, "[....]   0%"), (25, "[#...]  25%")])
def test_bar(percent: int | None, bar: str) -> None:
    assert following.bar(percent, width=4) == bar
