"""VMBackup: a point-in-time copy of a VM's disks to a backup target. Restoring is a
VirtualMachine whose spec.source.backup names the VMBackup."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from kubevisor.api import common, conditions, machines


class VMBackupPhase(StrEnum):
    """Lifecycle phase of a backup."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class BackupTarget(common.Model):
    """Where the copy is written."""

    path: common.PathString | None = None
    """Directory for the copy; relative paths are under the backup area of the chosen
    storage. Unset means a directory named after the VMBackup."""
    storage: machines.StorageKind = "shared"
    """shared: the storage every node mounts (restorable on any node); local: the VM's
    node only."""


class VMBackupSpec(common.Model):
    """What to back up and where."""

    vm_name: common.ObjectName
    """Name of the VirtualMachine (same namespace) to back up."""
    target: BackupTarget = Field(default_factory=BackupTarget)
    """Where the copy is written."""
    retain: bool = False
    """Keep the backup files when this VMBackup is deleted."""


class BackupDisk(common.Model):
    """One disk copied by the backup."""

    name: common.ShortString
    """Disk name from the VM spec."""
    path: common.PathString
    """Path of the copy."""
    size_bytes: Annotated[int, Field(ge=0)] | None = None
    """Size of the copy in bytes."""


class VMBackupStatus(conditions.Status):
    """Observed state of a backup."""

    phase: VMBackupPhase | None = None
    """Lifecycle phase."""
    node_name: common.ShortString | None = None
    """Node that took the backup."""
    started_at: common.Timestamp | None = None
    """When copying started."""
    completed_at: common.Timestamp | None = None
    """When copying finished (successfully or not)."""
    disks: list[BackupDisk] = Field(default_factory=list, max_length=16)
    """The disks copied."""


class VMBackup(common.Resource):
    """A point-in-time copy of a VirtualMachine's disks."""

    kind: Literal["VMBackup"] = "VMBackup"
    """Always VMBackup."""
    spec: VMBackupSpec
    """What to back up and where."""
    status: VMBackupStatus | None = None
    """Observed state."""
