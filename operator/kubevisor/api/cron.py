"""Cron schedules: the five-field syntax of crontab(5) and Kubernetes CronJobs, parsed
into sets and asked for the next instant.

One parser for the controller (when is a VMBackupSchedule due) and the API model (what
the schema accepts: :data:`PATTERN` is the shape CEL checks at the API server; the
ranges, which a regular expression cannot judge well, are checked here and reported as
a condition). Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or
jan-dec), day of week (0-7 or sun-sat; 0 and 7 are Sunday). Each field is ``*`` or a
comma list of ``N``, ``A-B``, with an optional ``/STEP`` on ``*`` or a range. Macros:
``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``),
``@hourly``. As in cron, when both day of month and day of week are restricted, a day
matching either is due. Times are UTC.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Final

#: The shape the API server checks (CEL ``matches``): five fields of digits, names,
#: ``* , - /``, or one macro. Bounds are checked by :func:`parse`.
PATTERN: Final = (
    r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)"
    r"|[0-9A-Za-z*,/-]+( +[0-9A-Za-z*,/-]+){4})$"
)

MACROS: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
#: (name, low, high, names) per field.
_FIELDS: Final = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
#: How far ahead :func:`next_after` looks (a 29 February schedule fits in 8 years).
HORIZON_DAYS: Final = 8 * 366


class CronError(ValueError):
    """The schedule is not valid cron; the message says which field and why."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A parsed schedule: the allowed values per field."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    """0 = Sunday (7 is folded to 0)."""
    days_restricted: bool
    weekdays_restricted: bool

    def day_matches(self, day: datetime) -> bool:
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return dom or dow
        return dom and dow


def _value(text: str, field: str, low: int, high: int, names: tuple[str, ...]) -> int:
    lowered = text.lower()
    if names and lowered in names:
        return names.index(lowered) + (1 if field == "month" else 0)
    if not text.isdigit():
        raise CronError(f"{field}: {text!r} is not a number" + (" or a name" if names else ""))
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{field}: {value} is outside {low}-{high}")
    return value


def _field(text: str, field: str, low: int, high: int, names: tuple[str, ...]) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{field}: empty list item in {text!r}")
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{field}: step {step_text!r} is not a positive number")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            first = _value(a, field, low, high, names)
            last = _value(b, field, low, high, names)
            if first > last:
                raise CronError(f"{field}: range {base!r} runs backwards")
        else:
            if step_text:
                raise CronError(f"{field}: a step needs '*' or a range, not {base!r}")
            first = last = _value(base, field, low, high, names)
        out.update(range(first, last + 1, step))
    return out


def parse(text: str) -> Schedule:
    """The schedule of a cron string; CronError with a sentence when it is not one."""
    expanded = MACROS.get(text.strip().lower(), text)
    parts = expanded.split()
    if len(parts) != 5:
        raise CronError(
            f"a schedule has 5 fields (minute hour day month weekday), not {len(parts)}"
        )
    sets = [_field(p, *spec) for p, spec in zip(parts, _FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])
    return Schedule(
        minutes=frozenset(sets[0]),
        hours=frozenset(sets[1]),
        days=frozenset(sets[2]),
        months=frozenset(sets[3]),
        weekdays=weekdays,
        days_restricted=not parts[2].startswith("*"),
        weekdays_restricted=not parts[4].startswith("*"),
    )


def next_after(schedule: Schedule, after: datetime) -> datetime | None:
    """The first instant strictly after ``after`` (UTC, whole minutes) the schedule is
    due; None if none within :data:`HORIZON_DAYS` (``0 0 31 2 *``: never)."""
    start = (after.astimezone(UTC) + timedelta(minutes=1)).replace(second=0, microsecond=0)
    day = start.replace(hour=0, minute=0)
    for offset in range(HORIZON_DAYS):
        current = day + timedelta(days=offset)
        if current.month not in schedule.months or not schedule.day_matches(current):
            continue
        for hour in sorted(schedule.hours):
            for minute in sorted(schedule.minutes):
                at = current.replace(hour=hour, minute=minute)
                if at >= start:
                    return at
    return None


def last_due(schedule: Schedule, after: datetime, now: datetime) -> datetime | None:
    """The latest instant in (``after``, ``now``] the schedule was due, None if none.
    Missed instants before it are not run (as a CronJob without backfill). Searches
    backwards from ``now``, so a long gap costs no more than a short one."""
    end = now.astimezone(UTC).replace(second=0, microsecond=0)
    floor = after.astimezone(UTC)
    day = end.replace(hour=0, minute=0)
    for offset in range(HORIZON_DAYS):
        current = day - timedelta(days=offset)
        if current + timedelta(days=1) <= floor:
            return None
        if current.month not in schedule.months or not schedule.day_matches(current):
            continue
        for hour in sorted(schedule.hours, reverse=True):
            for minute in sorted(schedule.minutes, reverse=True):
                at = current.replace(hour=hour, minute=minute)
                if at <= end:
                    return at if at > floor else None
    return None
