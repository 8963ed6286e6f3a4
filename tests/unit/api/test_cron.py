"""Cron parsing and the next/last due instant (pure)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from kubevisor.api import cron

pytestmark = pytest.mark.unit


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("*/15 * * * *", "2026-01-01T10:07", "2026-01-01T10:15"),
        ("*/15 * * * *", "2026-01-01T10:15", "2026-01-01T10:30"),
        ("0 2 * * *", "2026-01-01T02:00", "2026-01-02T02:00"),
        ("30 1 * * mon", "2026-12-03T00:00", "2026-12-07T01:30"),  # a Thursday
        ("0 0 1 jan *", "2026-06-01T00:00", "2027-01-01T00:00"),
        ("0 0 29 2 *", "2026-03-01T00:00", "2028-02-29T00:00"),
        ("0 12 1-7/3 * *", "2026-01-02T00:00", "2026-01-04T12:00"),
        ("0 0 13 * 5", "2026-01-01T00:00", "2026-01-02T00:00"),  # Friday OR the 13th
        ("0 0 * * 7", "2026-12-03T00:00", "2026-12-06T00:00"),  # 7 is Sunday
        ("@hourly", "2026-01-01T10:59", "2026-01-01T11:00"),
        ("@weekly", "2026-12-03T00:00", "2026-12-06T00:00"),
        ("5,10 4 * * *", "2026-01-01T04:05", "2026-01-01T04:10"),
        ("0 0 31 2 *", "2026-01-01T00:00", None),
    ],
)
def test_next_after(expr: str, after: str, expected: str | None) -> None:
    got = cron.next_after(cron.parse(expr), t(after))
    assert got == (t(expected) if expected else None)


@pytest.mark.parametrize(
    ("expr", "after", "now", "expected"),
    [
        ("*/15 * * * *", "2026-01-01T10:00", "2026-01-01T10:14", None),
        ("*/15 * * * *", "2026-01-01T10:00", "2026-01-01T10:15:30", "2026-01-01T10:15"),
        ("*/15 * * * *", "2026-01-01T10:00", "2026-01-01T11:40", "2026-01-01T11:30"),
        ("0 2 * * *", "2025-01-01T00:00", "2026-01-05T01:00", "2026-01-04T02:00"),
        ("* * * * *", "2020-01-01T00:00", "2026-01-05T01:00:59", "2026-01-05T01:00"),
        ("0 2 * * *", "2026-01-04T02:00", "2026-01-04T23:00", None),
    ],
)
def test_last_due(expr: str, after: str, now: str, expected: str | None) -> None:
    got = cron.last_due(cron.parse(expr), t(after), t(now))
    assert got == (t(expected) if expected else None)


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("* * * *", "5 fields"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("* 24 * * *", "hour: 24"),
        ("* * 0 * *", "day of month: 0"),
        ("* * * 13 *", "month: 13"),
        ("* * * * 8", "day of week: 8"),
        ("5-1 * * * *", "runs backwards"),
        ("*/0 * * * *", "step"),
        ("5/2 * * * *", "a step needs"),
        ("* * * foo *", "not a number or a name"),
        ("1,,2 * * * *", "empty list item"),
    ],
)
def test_invalid(expr: str, words: str) -> None:
    with pytest.raises(cron.CronError, match=re.escape(words)):
        cron.parse(expr)


@pytest.mark.parametrize(
    ("expr", "shape"),
    [("*/5 * * * *", True), ("@daily", True), ("0 2 * * mon-fri", True),
     ("* * * *", False), ("@often", False), ("0 2 * * * *", False), ("0;2 * * * *", False)],
)  # fmt: skip
def test_pattern_is_the_shape_cel_checks(expr: str, shape: bool) -> None:
    assert bool(re.fullmatch(cron.PATTERN, expr)) is shape
