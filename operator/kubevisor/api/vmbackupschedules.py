"""VMBackupSchedule: VMBackups of one VM on a cron schedule, keeping the last N.

A kind of its own rather than a field on the VirtualMachine: a VM may want more than
one schedule (hourly incrementals to a fast target, a weekly full to the NAS), a backup
operator may own schedules without write access to VMs, and its status (last and next
run, what was pruned) has somewhere to live — as a CronJob beside a Deployment.

The controller (``controller/vmbackupschedules``) is the only writer of its status. At
each due instant it creates a VMBackup labelled :data:`LABEL_SCHEDULE`, named
``<schedule>-<yyyymmddhhmm>`` (so a restarted controller cannot create the same run
twice), and prunes the schedule's backups beyond ``keep`` without breaking a chain a
kept backup needs (``controller/vmbackupschedules/pruning.py``). Deleting the schedule
keeps its VMBackups (no owner reference): a backup is deleted only when asked.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import ConfigDict, Field, model_validator

from kubevisor.api import common, conditions, cron, vmbackups


class SchedulePhase(StrEnum):
    """Whether the schedule creates backups."""

    ACTIVE = "Active"
    """Backups are created at each due instant."""
    SUSPENDED = "Suspended"
    """spec.suspend is true: no backup is created (pruning continues)."""
    INVALID = "Invalid"
    """spec.schedule is not valid cron (the Ready condition says which field)."""


class ScheduleReason(StrEnum):
    """Reasons on a VMBackupSchedule's Ready condition (and the Events beside it)."""

    SCHEDULED = "Scheduled"
    """Active; status.nextRunAt says when the next backup is created."""
    SUSPENDED = "Suspended"
    """spec.suspend is true."""
    INVALID_SCHEDULE = "InvalidSchedule"
    """spec.schedule has the shape of cron but a value out of range (or never fires)."""
    BACKUP_CREATED = "BackupCreated"
    """Event: a due instant created a VMBackup."""
    SKIPPED_BUSY = "SkippedBusy"
    """Event: a due instant was skipped because the schedule's previous backup still
    runs (a backup of the VM is never queued behind its own schedule)."""
    PRUNED = "Pruned"
    """Event: backups beyond spec.keep were deleted."""


class VMBackupScheduleSpec(common.Model):
    """When to back up which VM, where, and how many backups to keep."""

    model_config = ConfigDict(
        json_schema_extra=common.cel(
            common.rule(
                "self.fullEvery <= self.keep",
                "fullEvery must not exceed keep (a kept chain would need pruned backups)",
                field_path=".fullEvery",
            )
        )
    )

    vm_name: common.ObjectName
    """Name of the VirtualMachine (same namespace) to back up."""
    schedule: Annotated[str, Field(pattern=cron.PATTERN, max_length=100)]
    """Cron, UTC: five fields (minute hour day-of-month month day-of-week) or a macro
    (@hourly, @daily, @weekly, @monthly, @yearly)."""
    keep: Annotated[int, Field(ge=1, le=1000)] = 7
    """How many of the schedule's Succeeded backups to keep; older ones are deleted
    unless a kept incremental needs them."""
    full_every: Annotated[int, Field(ge=1, le=1000)] = 1
    """Every Nth backup is Full, the others Incremental on the previous one (1: every
    backup is Full). A stopped VM is always backed up Full (offline)."""
    target: vmbackups.BackupTarget = Field(default_factory=vmbackups.BackupTarget)
    """Where the backups are written (as VMBackup spec.target)."""
    quiesce: bool = False
    """Freeze the guest's file systems for each backup (needs a qemu guest agent)."""
    suspend: bool = False
    """Stop creating backups (kept ones stay; pruning continues)."""

    @model_validator(mode="after")
    def _full_within_keep(self) -> VMBackupScheduleSpec:
        if self.full_every > self.keep:
            raise ValueError(
                "fullEvery must not exceed keep (a kept chain would need pruned backups)"
            )
        return self


class VMBackupScheduleStatus(conditions.Status):
    """Observed state of a schedule."""

    phase: SchedulePhase | None = None
    """Active, Suspended or Invalid."""
    last_run_at: common.Timestamp | None = None
    """The due instant the latest backup was created for (or skipped at)."""
    next_run_at: common.Timestamp | None = None
    """The next due instant."""
    last_backup: common.ObjectName | None = None
    """The VMBackup created last."""
    kept: list[common.ObjectName] = Field(default_factory=list, max_length=1000)
    """The schedule's backups kept now (newest first), including the older ones a kept
    incremental needs."""


class VMBackupSchedule(common.Resource):
    """VMBackups of a VirtualMachine on a cron schedule, keeping the last N."""

    kind: Literal["VMBackupSchedule"] = "VMBackupSchedule"
    """Always VMBackupSchedule."""
    spec: VMBackupScheduleSpec
    """When, what, where and how many."""
    status: VMBackupScheduleStatus | None = None
    """Observed state."""


CONTROLLER_FIELD_MANAGER: Final = "kubevisor-controller-backupschedules"
#: Label on a VMBackup naming the schedule that created it.
LABEL_SCHEDULE: Final = "kubevisor.io/backup-schedule"


def backup_name(schedule: str, due: datetime) -> str:
    """The VMBackup a due instant creates: ``<schedule>-<yyyymmddhhmm>`` (deterministic,
    so creating it twice is AlreadyExists, not a second backup)."""
    return f"{schedule[: 253 - 13]}-{due.strftime('%Y%m%d%H%M')}"
