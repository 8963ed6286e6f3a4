"""What the agent does with one VMBackup now (pure; table-tested).

Level-based on what the objects and the node say: the controller's phase and
finalizer, the agent's own report, whether the VM's domain runs and whether libvirt runs
a backup job on it, and whether the backup's final directory is already complete (a
rename that happened before a status write was lost).
"""

from __future__ import annotations

import dataclasses
import enum

from kubevisor.api import vmbackups


class Action(enum.StrEnum):
    NOTHING = "nothing"
    LIVE = "live"
    """Begin (or adopt, when a job runs) a live push backup and follow it."""
    OFFLINE = "offline"
    """Copy the stopped VM's disks with qemu-img."""
    ADOPT_DONE = "adopt-done"
    """The final directory is complete (renamed, manifest written): report success."""
    FAIL = "fail"
    CLEAN_UP = "clean-up"
    """Deleted and released by the controller: remove our files, then our finalizer."""


@dataclasses.dataclass(frozen=True)
class Observed:
    phase: vmbackups.VMBackupPhase
    reported: vmbackups.AgentState | None
    mode: vmbackups.BackupMode
    deleting: bool
    controller_finalizer: bool
    agent_finalizer: bool
    domain: str | None
    """"running", "paused", "shutoff", ... or None when no domain is defined."""
    job_running: bool
    final_complete: bool
    driving: bool
    """This process already follows the backup."""


@dataclasses.dataclass(frozen=True)
class Plan:
    action: Action
    reason: str | None = None
    message: str = ""


LIVE_STATES = frozenset({"running", "paused"})


def decide(o: Observed) -> Plan:
    """The next step (see module docstring). Order: deletion, then done, then copy."""
    if o.deleting:
        if o.controller_finalizer or not o.agent_finalizer:
            return Plan(Action.NOTHING)  # the controller may still refuse the deletion
        return Plan(Action.CLEAN_UP)
    if o.phase is not vmbackups.VMBackupPhase.RUNNING or o.reported in (
        vmbackups.AgentState.SUCCEEDED,
        vmbackups.AgentState.FAILED,
    ):
        return Plan(Action.NOTHING)
    if o.driving:
        return Plan(Action.NOTHING)
    if o.final_complete:
        return Plan(Action.ADOPT_DONE)
    if o.job_running or o.domain in LIVE_STATES:
        return Plan(Action.LIVE)
    if o.mode is vmbackups.BackupMode.INCREMENTAL:
        return Plan(
            Action.FAIL,
            vmbackups.BackupReason.VM_NOT_RUNNING,
            "an Incremental backup needs the running VM (its checkpoints track what"
            " changed); the VM is stopped. Take a Full backup, or start the VM.",
        )
    return Plan(Action.OFFLINE)
