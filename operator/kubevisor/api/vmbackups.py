"""VMBackup: a point-in-time copy of a VM's disks to a backup target. Restoring is a
VirtualMachine whose spec.source.backup names the VMBackup.

The contract between the controller's VMBackup reconciler and the agent on the VM's node
(docs/backup.md). Two writers, each with its own field manager and fields:

- the controller (``CONTROLLER_FIELD_MANAGER``): ``phase``, ``nodeName``, ``mode``,
  ``chain``, ``machine`` (the VM's recorded machine when the backup was admitted: what a
  restore starts from), ``conditions``; the label :data:`LABEL_BACKUP_NODE` on the
  VMBackup (the node's agent watches with a selector on it) and the finalizer
  ``groups.FINALIZER``;
- the node's agent (``AGENT_FIELD_MANAGER``): ``agent`` (its report: state, reason,
  message), ``startedAt``, ``completedAt``, ``durationMs``, ``progress``, ``sizeBytes``,
  ``disks`` (path, size, sha256 per disk), ``checkpoint``, ``directory``; and the
  finalizer ``groups.AGENT_FINALIZER`` while files of the backup exist.

Only the controller writes ``phase``; it follows the agent's report. A backup and a
Migration of the same VM never run at once (:func:`waits_for`, used by both
reconcilers).
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Any, Final, Literal

from pydantic import ConfigDict, Field, model_validator

from kubevisor.api import common, conditions, machines, migrations, nodes


class VMBackupPhase(StrEnum):
    """Lifecycle phase of a backup."""

    PENDING = "Pending"
    """Accepted; waiting for its VM, a running migration or backup, or a previous backup
    (the Ready condition says which)."""
    RUNNING = "Running"
    """The VM's node copies the disks (see status.progress)."""
    SUCCEEDED = "Succeeded"
    """Every disk was copied and checksummed; the files are complete under the target."""
    FAILED = "Failed"
    """The copy failed; nothing under the target was replaced (conditions say why)."""


FINAL_PHASES: Final = frozenset({VMBackupPhase.SUCCEEDED, VMBackupPhase.FAILED})


class BackupMode(StrEnum):
    """What is copied."""

    FULL = "Full"
    """Every disk in full."""
    INCREMENTAL = "Incremental"
    """Only what changed since the previous Succeeded backup of the same VM to the same
    target (libvirt checkpoints; the VM must be running)."""


class BackupReason(StrEnum):
    """Reasons on a VMBackup's Ready condition (and the Events beside it)."""

    VM_NOT_FOUND = "VMNotFound"
    """spec.vmName names no VirtualMachine in the namespace."""
    VM_NOT_PLACED = "VMNotPlaced"
    """The VM has no node (and so no disks) yet."""
    MIGRATION_IN_PROGRESS = "MigrationInProgress"
    """A Migration of the VM runs (or was asked for first); the backup waits for it."""
    BACKUP_IN_PROGRESS = "BackupInProgress"
    """Another backup of the same VM runs (or was asked for first); this one waits."""
    NO_PREVIOUS_BACKUP = "NoPreviousBackup"
    """Incremental, but no Succeeded live backup of the VM to the same target exists."""
    NODE_LOST = conditions.Reason.NODE_LOST.value
    """The VM's node stopped renewing its Lease while the backup ran."""
    TARGET_UNAVAILABLE = "TargetUnavailable"
    """The target directory does not exist or cannot be written on the node."""
    CHECKPOINT_MISSING = "CheckpointMissing"
    """The previous backup's libvirt checkpoint is not on the VM's domain (the VM moved
    or was redefined): take a Full backup."""
    VM_NOT_RUNNING = "VMNotRunning"
    """Incremental needs the running domain (its checkpoints); the VM is stopped."""
    QUIESCE_FAILED = "QuiesceFailed"
    """spec.quiesce asked to freeze the guest's file systems and the guest agent could
    not (none is running in the guest, say)."""
    BACKUP_FAILED = "BackupFailed"
    """libvirt or qemu-img reported an error; the message carries it."""
    IN_PROGRESS = conditions.Reason.IN_PROGRESS.value
    """The disks are being copied."""
    SUCCEEDED = conditions.Reason.SUCCEEDED.value
    """The backup is complete."""
    NEEDED_BY_INCREMENTAL = "NeededByIncremental"
    """Deletion refused: a kept incremental backup chains to this one."""


class BackupTarget(common.Model):
    """Where the copy is written."""

    model_config = ConfigDict(
        json_schema_extra=common.cel(
            common.rule(
                "!has(self.path) || !self.path.split('/').exists(p, p == '..')",
                "target.path must not contain '..'",
                field_path=".path",
            )
        )
    )

    path: common.PathString | None = None
    """Directory the backups go to (the NAS mount). An absolute path must exist on the
    node (a missing one fails the backup with TargetUnavailable); a relative path is
    under ``backups/`` of the chosen storage (created as needed). Unset means that
    ``backups/`` directory itself."""
    storage: machines.StorageKind = "shared"
    """shared: the storage every node mounts (restorable on any node); local: the VM's
    node only. Used for relative paths."""

    @model_validator(mode="after")
    def _no_parent(self) -> BackupTarget:
        if self.path is not None and ".." in self.path.split("/"):
            raise ValueError("target.path must not contain '..'")
        return self


class VMBackupSpec(common.Model):
    """What to back up and where. Immutable: create a new VMBackup for a new copy."""

    model_config = ConfigDict(
        json_schema_extra=common.cel(
            common.rule("self == oldSelf", "a VMBackup's spec cannot change; create a new one")
        )
    )

    vm_name: common.ObjectName
    """Name of the VirtualMachine (same namespace) to back up."""
    target: BackupTarget = Field(default_factory=BackupTarget)
    """Where the copy is written."""
    mode: BackupMode = BackupMode.FULL
    """Full, or Incremental on top of the previous backup to the same target."""
    quiesce: bool = False
    """Freeze the guest's file systems (qemu guest agent) for the instant the backup
    starts; without a guest agent the backup fails with QuiesceFailed."""
    retain: bool = False
    """Retention: keep the backup files when this VMBackup is deleted (false: deleting
    the VMBackup removes its files; a backup a kept incremental needs is never
    deleted)."""


class BackupDisk(common.Model):
    """One disk copied by the backup."""

    name: common.ShortString
    """Disk name from the VM spec."""
    path: common.PathString
    """Path of the copy (a qcow2; an incremental's backing file is the previous copy)."""
    size_bytes: Annotated[int, Field(ge=0)] | None = None
    """Size of the copy's file in bytes."""
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", max_length=64)] | None = None
    """SHA-256 of the copy's file, computed after it was written."""


class BackupProgress(common.Model):
    """Bytes copied so far, from libvirt's job statistics (about once a second)."""

    done_bytes: Annotated[int, Field(ge=0)] = 0
    """Bytes copied so far."""
    total_bytes: Annotated[int, Field(ge=0)] | None = None
    """Bytes to copy in all (unset while unknown)."""
    percent: Annotated[int, Field(ge=0, le=100)] | None = None
    """done over total."""
    updated_at: common.Timestamp | None = None
    """When this sample was taken."""


class BackupChain(common.Model):
    """The backups an incremental stands on (a Full's chain names only itself)."""

    full: common.ObjectName
    """The Full backup at the root of the chain."""
    previous: common.ObjectName | None = None
    """The backup this one adds to (unset for a Full)."""
    length: Annotated[int, Field(ge=1, le=1000)] = 1
    """Backups in the chain including this one (1 for a Full)."""


class AgentState(StrEnum):
    """What the node's agent reports of the copy."""

    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class AgentReport(common.Model):
    """The node agent's report (field manager ``AGENT_FIELD_MANAGER``)."""

    node: common.ShortString
    """The reporting node."""
    state: AgentState
    """Where the copy stands."""
    reason: common.ShortString | None = None
    """A :class:`BackupReason` value for Failed."""
    message: Annotated[str, Field(max_length=4096)] | None = None
    """A sentence, with libvirt's or qemu-img's own words for a failure."""


class VMBackupStatus(conditions.Status):
    """Observed state of a backup."""

    phase: VMBackupPhase | None = None
    """Lifecycle phase."""
    node_name: common.ShortString | None = None
    """Node that takes (took) the backup: the VM's node when it was admitted."""
    mode: BackupMode | None = None
    """The mode, as admitted."""
    chain: BackupChain | None = None
    """Which backups this one needs for a restore."""
    machine: machines.MachineSpec | None = None
    """The VM's machine when the backup was admitted (a restore starts from it)."""
    agent: AgentReport | None = None
    """The node agent's report."""
    started_at: common.Timestamp | None = None
    """When copying started."""
    completed_at: common.Timestamp | None = None
    """When copying finished (successfully or not)."""
    duration_ms: Annotated[int, Field(ge=0)] | None = None
    """completedAt minus startedAt, in milliseconds."""
    progress: BackupProgress | None = None
    """Bytes done / total while Running; the last sample stays."""
    size_bytes: Annotated[int, Field(ge=0)] | None = None
    """Sum of the copies' file sizes."""
    disks: list[BackupDisk] = Field(default_factory=list, max_length=16)
    """The disks copied."""
    checkpoint: common.ShortString | None = None
    """The libvirt checkpoint a live backup created on the domain (an Incremental of the
    same VM copies what changed since it). Unset for an offline copy."""
    directory: common.PathString | None = None
    """The backup's own directory under the target (deleting the VMBackup removes it)."""


class VMBackup(common.Resource):
    """A point-in-time copy of a VirtualMachine's disks."""

    kind: Literal["VMBackup"] = "VMBackup"
    """Always VMBackup."""
    spec: VMBackupSpec
    """What to back up and where."""
    status: VMBackupStatus | None = None
    """Observed state."""


# -- who writes what --------------------------------------------------------------------

CONTROLLER_FIELD_MANAGER: Final = "kubevisor-controller-backups"
AGENT_FIELD_MANAGER: Final = "kubevisor-agent-backups"
CONTROLLER_FIELDS: Final = ("phase", "nodeName", "mode", "chain", "machine", "conditions")
AGENT_FIELDS: Final = (
    "agent",
    "startedAt",
    "completedAt",
    "durationMs",
    "progress",
    "sizeBytes",
    "disks",
    "checkpoint",
    "directory",
)
#: Label on a VMBackup naming the node whose agent takes it (set when admitted).
LABEL_BACKUP_NODE: Final = "kubevisor.io/backup-node"


def node_selector(node: str) -> str:
    """The server-side label selector of the VMBackups ``node``'s agent takes (pure)."""
    return f"{LABEL_BACKUP_NODE}={node}"


def checkpoint_name(backup_name: str) -> str:
    """The libvirt checkpoint a live backup creates on the VM's domain (pure)."""
    return f"kubevisor-{backup_name}"


# -- where the files go (both sides: the agent writes, the restore reads) ---------------

#: Directory under a storage root (``<state-dir>`` or ``<shared-dir>``) for relative paths.
BACKUPS_DIR: Final = "backups"


def target_dir(target: BackupTarget, *, roots: dict[str, str | None]) -> str | None:
    """The target directory on a node whose storage roots (``"local"``/``"shared"`` ->
    directory) are ``roots``; None when the storage kind is missing there (pure)."""
    if target.path is not None and target.path.startswith("/"):
        return posixpath.normpath(target.path)
    root = roots.get(target.storage)
    if root is None:
        return None
    base = posixpath.join(root, BACKUPS_DIR)
    return posixpath.normpath(posixpath.join(base, target.path)) if target.path else base


def backup_dir(target: str, namespace: str, name: str) -> str:
    """The backup's own directory under the target (pure)."""
    return str(PurePosixPath(target) / namespace / name)


def staging_dir(target: str, namespace: str, name: str) -> str:
    """Where the backup is written before it is complete: renamed to
    :func:`backup_dir` on success, so a failed copy never replaces a good one (pure)."""
    return str(PurePosixPath(target) / namespace / f".{name}.partial")


def disk_file(directory: str, disk: str) -> str:
    """A disk's copy inside a backup directory (pure)."""
    return str(PurePosixPath(directory) / f"{disk}.qcow2")


# -- who goes first: a backup and a migration of the same VM never run at once ----------


@dataclasses.dataclass(frozen=True)
class Turn:
    """One unfinished backup or migration of a VM, as both reconcilers see it."""

    kind: str
    """VMBackup or Migration."""
    name: str
    created: datetime
    active: bool
    """Already running (a backup Running, a migration past Pending): it keeps its turn."""


def waits_for(me: Turn, others: Iterable[Turn]) -> Turn | None:
    """The operation ``me`` (not active yet) waits for, or None when it may start (pure).

    An active one is waited for; otherwise the one asked for first (creationTimestamp,
    then kind and name) goes first. Both reconcilers call this with every unfinished
    backup and migration of the VM, so they agree and never both start."""
    if me.active:
        return None
    ahead = [o for o in others if (o.kind, o.name) != (me.kind, me.name)]
    running = [o for o in ahead if o.active]
    if running:
        return min(running, key=lambda o: (o.created, o.kind, o.name))
    earlier = [o for o in ahead if (o.created, o.kind, o.name) < (me.created, me.kind, me.name)]
    return min(earlier, key=lambda o: (o.created, o.kind, o.name)) if earlier else None


#: Ready/Scheduled reasons of a Pending object that only waits for its turn (or for a
#: slot): such an object contends. One refused for another reason (no target, no previous
#: backup, no VM) does not hold up the other kind forever.
TURN_REASONS: Final = frozenset(
    {
        BackupReason.MIGRATION_IN_PROGRESS.value,
        BackupReason.BACKUP_IN_PROGRESS.value,
        migrations.MigrationReason.CLUSTER_LIMIT.value,
        migrations.MigrationReason.NODE_OUTBOUND_LIMIT.value,
        migrations.MigrationReason.VM_ALREADY_MIGRATING.value,
        migrations.MigrationReason.BACKUP_IN_PROGRESS.value,
    }
)


def _waiting_reason(status: Mapping[str, Any], condition: str) -> str | None:
    found = conditions.get_condition(list(status.get("conditions") or []), condition)
    if found is None or found.get("status") == "True":
        return None
    return str(found.get("reason") or "")


def _created(meta: Mapping[str, Any]) -> datetime:
    return nodes.parse_time(meta.get("creationTimestamp")) or datetime.fromtimestamp(0, UTC)


def backup_turn(obj: Mapping[str, Any], vm_name: str) -> Turn | None:
    """The Turn of a VMBackup object if it is an unfinished backup of ``vm_name`` that
    contends (Running, or Pending only for its turn or not looked at yet); else None."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    meta = obj.get("metadata") or {}
    if spec.get("vmName") != vm_name or meta.get("deletionTimestamp"):
        return None
    phase = status.get("phase") or VMBackupPhase.PENDING.value
    if phase in (VMBackupPhase.SUCCEEDED.value, VMBackupPhase.FAILED.value):
        return None
    active = phase == VMBackupPhase.RUNNING.value
    reason = _waiting_reason(status, conditions.ConditionType.READY)
    if not active and reason is not None and reason not in TURN_REASONS:
        return None
    return Turn("VMBackup", str(meta.get("name")), _created(meta), active)


def migration_turn(obj: Mapping[str, Any], vm_name: str) -> Turn | None:
    """The Turn of a Migration object if it is an unfinished migration of ``vm_name``
    that contends (past Pending, or Pending only for a slot or its turn); else None."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    meta = obj.get("metadata") or {}
    if spec.get("vmName") != vm_name:
        return None
    phase = status.get("phase") or migrations.MigrationPhase.PENDING.value
    if phase in {p.value for p in migrations.FINAL_PHASES}:
        return None
    active = phase != migrations.MigrationPhase.PENDING.value
    reason = _waiting_reason(status, conditions.ConditionType.SCHEDULED)
    if not active and reason is not None and reason not in TURN_REASONS:
        return None
    return Turn("Migration", str(meta.get("name")), _created(meta), active)
