"""What a VMBackupSchedule pass does (pure): whether a backup is due and in which mode,
and which of the schedule's backups to prune.

Pruning rules (``prune``), in order:

1. The ``keep`` newest Succeeded backups (by creation time, then name) are kept.
2. A backup being copied (Pending or Running) is kept.
3. Every backup a kept one chains to (``status.chain.previous``, followed to the Full) is
   kept too, so a restore of any kept backup still finds its whole chain; the schedule
   may then hold more than ``keep`` backups until the chain's newer links age out.
4. A Failed backup (its staging files are already gone) is deleted once a newer backup
   Succeeded; the newest Failed one stays to show why.
5. Everything else of the schedule is deleted, whole chains at once (the VMBackup
   controller allows deleting a chain together; it refuses only deleting a backup a
   *kept* incremental needs). Backups being deleted already are left alone.

Mode rules (``next_mode``): Full when the VM is not running (an offline copy has no
checkpoint), when ``fullEvery`` is 1, when the schedule has no Succeeded live backup
(one with a checkpoint), when its newest finished backup Failed (an Incremental failing
for a missing checkpoint would fail again), or when the newest Succeeded one's chain
already holds ``fullEvery`` backups; Incremental otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

from kubevisor.api import cron, groups, vmbackups, vmbackupschedules

Phase = vmbackups.VMBackupPhase
Mode = vmbackups.BackupMode


@dataclasses.dataclass(frozen=True)
class Item:
    """One of the schedule's VMBackups, as pruning and mode choice see it."""

    name: str
    created: datetime
    phase: Phase
    previous: str | None = None
    """status.chain.previous (an Incremental's parent)."""
    chain_length: int = 1
    live: bool = False
    """It has a checkpoint (an Incremental can chain to it)."""
    deleting: bool = False


def _newest_first(items: Sequence[Item]) -> list[Item]:
    return sorted(items, key=lambda i: (i.created, i.name), reverse=True)


@dataclasses.dataclass(frozen=True)
class Pruning:
    """The pruning plan: names to keep (newest first) and to delete."""

    keep: tuple[str, ...]
    delete: tuple[str, ...]


def prune(items: Sequence[Item], *, keep: int) -> Pruning:
    """Which of the schedule's backups to keep and to delete (module docstring)."""
    ordered = _newest_first([i for i in items if not i.deleting])
    by_name = {i.name: i for i in items}
    succeeded = [i for i in ordered if i.phase is Phase.SUCCEEDED]
    roots = {i.name for i in succeeded[:keep]}
    roots |= {i.name for i in ordered if i.phase in (Phase.PENDING, Phase.RUNNING)}
    newest_ok = succeeded[0].created if succeeded else None
    failed = [i for i in ordered if i.phase is Phase.FAILED]
    if failed and (newest_ok is None or failed[0].created > newest_ok):
        roots.add(failed[0].name)
    kept: set[str] = set()
    for name in roots:
        current: str | None = name
        while current is not None and current not in kept:
            kept.add(current)
            parent = by_name.get(current)
            current = parent.previous if parent is not None else None
    return Pruning(
        keep=tuple(i.name for i in ordered if i.name in kept),
        delete=tuple(i.name for i in reversed(ordered) if i.name not in kept),
    )


def next_mode(items: Sequence[Item], *, full_every: int, vm_running: bool) -> Mode:
    """The mode of the schedule's next backup (module docstring)."""
    if not vm_running or full_every <= 1:
        return Mode.FULL
    ordered = _newest_first([i for i in items if not i.deleting])
    finished = [i for i in ordered if i.phase in (Phase.SUCCEEDED, Phase.FAILED)]
    if not finished or finished[0].phase is Phase.FAILED:
        return Mode.FULL
    latest = finished[0]
    if not latest.live or latest.chain_length >= full_every:
        return Mode.FULL
    return Mode.INCREMENTAL


@dataclasses.dataclass(frozen=True)
class Due:
    """What the schedule's clock says now."""

    run_at: datetime | None
    """The due instant to act on now (None: nothing is due)."""
    next_at: datetime | None
    """The next due instant after now (None: never)."""


def due(schedule: cron.Schedule, *, since: datetime, now: datetime) -> Due:
    """The latest instant due in (since, now] — missed earlier ones are not run, as a
    CronJob without backfill — and the next one after now. ``since`` is the last run
    (or the schedule's creation)."""
    return Due(
        run_at=cron.last_due(schedule, since, now),
        next_at=cron.next_after(schedule, now),
    )


def busy(items: Sequence[Item]) -> bool:
    """A backup of the schedule is still being copied (the next due instant is skipped:
    SkippedBusy)."""
    return any(i.phase in (Phase.PENDING, Phase.RUNNING) and not i.deleting for i in items)


def backup_body(
    schedule: vmbackupschedules.VMBackupSchedule,
    *,
    namespace: str,
    name: str,
    due_at: datetime,
    mode: Mode,
) -> dict[str, object]:
    """The VMBackup a due instant creates (pure)."""
    spec = vmbackups.VMBackupSpec(
        vm_name=schedule.spec.vm_name,
        target=schedule.spec.target,
        mode=mode,
        quiesce=schedule.spec.quiesce,
    )
    return {
        "apiVersion": groups.API_VERSION,
        "kind": "VMBackup",
        "metadata": {
            "name": vmbackupschedules.backup_name(name, due_at),
            "namespace": namespace,
            "labels": {vmbackupschedules.LABEL_SCHEDULE: name},
        },
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
