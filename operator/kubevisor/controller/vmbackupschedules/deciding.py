"""One VMBackupSchedule pass, decided (pure): the backup to create (if one is due), the
backups to prune, the status and the Events. ``handlers`` reads and writes around it.

Order of rules:

1. A schedule string CEL let through but :func:`cron.parse` refuses (``60 * * * *``),
   or one that never fires (``0 0 31 2 *``), makes the schedule Invalid
   (Ready=False ``InvalidSchedule`` naming the field, a Warning Event); nothing is
   created. Pruning still runs: ``keep`` is valid on its own.
2. Pruning (``planning.prune``) runs on every pass, suspended or not.
3. Suspended: nothing is created (Ready=True ``Suspended``).
4. The latest instant due since the last run (or creation) creates a VMBackup named for
   that instant, in the mode ``planning.next_mode`` picks — unless a backup of the
   schedule is still being copied: then the instant is skipped (``SkippedBusy`` Event)
   and the next one is awaited. Either way the instant becomes ``lastRunAt``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from kubevisor.api import conditions, cron, vmbackupschedules
from kubevisor.controller.vmbackupschedules import planning

Reason = vmbackupschedules.ScheduleReason
Phase = vmbackupschedules.SchedulePhase
READY = conditions.ConditionType.READY


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a pass knows."""

    schedule: vmbackupschedules.VMBackupSchedule
    namespace: str
    name: str
    created: datetime
    """The schedule's creationTimestamp (the first run is the first instant after it)."""
    now: datetime
    items: Sequence[planning.Item]
    """The schedule's VMBackups (labelled with its name)."""
    vm_running: bool


@dataclasses.dataclass(frozen=True)
class Ready:
    status: Literal["True", "False"]
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to write."""

    create: dict[str, Any] | None
    """The VMBackup to create (AlreadyExists is success: the name is the instant's)."""
    delete: tuple[str, ...]
    """The schedule's VMBackups to delete (pruning)."""
    phase: Phase
    ready: Ready
    last_run_at: datetime | None
    next_run_at: datetime | None
    last_backup: str | None
    kept: tuple[str, ...]
    events: tuple[tuple[str, str, str], ...]
    """(type, reason, message)."""


def decide(i: Inputs) -> Decision:
    """The pass (module docstring)."""
    spec = i.schedule.spec
    st = i.schedule.status or vmbackupschedules.VMBackupScheduleStatus()
    pruning = planning.prune(i.items, keep=spec.keep)
    events: list[tuple[str, str, str]] = []
    if pruning.delete:
        events.append((
            "Normal", Reason.PRUNED,
            f"deleting {', '.join(pruning.delete)} (keeping {spec.keep} Succeeded and the"
            " chains they need)",
        ))  # fmt: skip
    base = Decision(
        create=None, delete=pruning.delete, phase=Phase.ACTIVE,
        ready=Ready("True", Reason.SCHEDULED, ""), last_run_at=st.last_run_at,
        next_run_at=None, last_backup=st.last_backup, kept=pruning.keep, events=(),
    )  # fmt: skip
    try:
        parsed = cron.parse(spec.schedule)
        when = planning.due(parsed, since=st.last_run_at or i.created, now=i.now)
        if when.next_at is None:
            raise cron.CronError("it never fires")
    except cron.CronError as exc:
        message = f"spec.schedule {spec.schedule!r} is not valid cron: {exc}"
        if st.phase is not Phase.INVALID:
            events.append(("Warning", Reason.INVALID_SCHEDULE, message))
        return dataclasses.replace(
            base, phase=Phase.INVALID, events=tuple(events),
            ready=Ready("False", Reason.INVALID_SCHEDULE, message),
        )  # fmt: skip
    if spec.suspend:
        return dataclasses.replace(
            base, phase=Phase.SUSPENDED, events=tuple(events),
            ready=Ready("True", Reason.SUSPENDED, "spec.suspend is true: no backup is created."),
        )  # fmt: skip
    create = None
    last_backup = st.last_backup
    if when.run_at is not None:
        at = f"{when.run_at:%Y-%m-%d %H:%M}"
        if planning.busy(i.items):
            events.append(
                ("Normal", Reason.SKIPPED_BUSY, f"skipped {at}: the previous backup still runs")
            )
        else:
            mode = planning.next_mode(i.items, full_every=spec.full_every, vm_running=i.vm_running)
            create = planning.backup_body(
                i.schedule, namespace=i.namespace, name=i.name, due_at=when.run_at, mode=mode
            )
            last_backup = vmbackupschedules.backup_name(i.name, when.run_at)
            events.append(
                ("Normal", Reason.BACKUP_CREATED, f"{mode.value} backup {last_backup} for {at}")
            )
    return dataclasses.replace(
        base,
        create=create,
        last_run_at=when.run_at or st.last_run_at,
        next_run_at=when.next_at,
        last_backup=last_backup,
        events=tuple(events),
        ready=Ready(
            "True", Reason.SCHEDULED,
            f"next backup at {when.next_at:%Y-%m-%d %H:%M} UTC; keeping {spec.keep}",
        ),
    )  # fmt: skip
