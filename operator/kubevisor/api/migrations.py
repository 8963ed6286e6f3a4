"""Migration: move a running VM to another node, live, keeping its MAC and state."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from kubevisor.api import common, conditions


class MigrationPhase(StrEnum):
    """Lifecycle phase of a migration."""

    PENDING = "Pending"
    SCHEDULING = "Scheduling"
    TARGET_READY = "TargetReady"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class MigrationPolicy(common.Model):
    """How the live migration runs (libvirt migration parameters and preconditions)."""

    bandwidth_mi_bps: Annotated[int, Field(gt=0, le=1_000_000)] | None = None
    """Bandwidth cap in MiB/s; unset means unlimited."""
    max_downtime_ms: Annotated[int, Field(gt=0, le=600_000)] = 300
    """Longest the guest may be paused for the final switch-over, in milliseconds."""
    auto_converge: bool = True
    """Throttle the guest's vCPUs when memory is dirtied faster than it is copied."""
    post_copy: bool = False
    """Switch to post-copy (run on the target, fetch pages on demand) if pre-copy does not
    converge. Faster to finish, but a network failure then loses the guest."""
    completion_timeout_seconds: Annotated[int, Field(gt=0, le=86_400)] = 300
    """Give up (and keep the VM on the source) after this many seconds."""
    max_rtt_ms: Annotated[float, Field(gt=0, le=10_000)] = Field(10, alias="maxRTTMs")
    """Refuse targets whose measured round-trip time from the source exceeds this."""
    allow_block_copy: bool = False
    """Copy local disks over the network when the target cannot reach the VM's storage."""


class MigrationSpec(common.Model):
    """Which VM to move and how."""

    vm_name: common.ObjectName
    """Name of the VirtualMachine (same namespace) to migrate; it must be running."""
    target_node: common.ShortString | None = None
    """Node to move to; unset lets the controller choose."""
    cancel: bool = False
    """Set to true to cancel an unfinished migration (deleting the Migration also does)."""
    policy: MigrationPolicy = Field(default_factory=MigrationPolicy)
    """Migration parameters."""


class MigrationStatus(conditions.Status):
    """Observed state of a migration."""

    phase: MigrationPhase | None = None
    """Lifecycle phase."""
    source_node: common.ShortString | None = None
    """Node the VM ran on when the migration started."""
    target_node: common.ShortString | None = None
    """Node the VM is moving to."""
    started_at: common.Timestamp | None = None
    """When memory copying started."""
    completed_at: common.Timestamp | None = None
    """When the migration ended (in any final phase)."""
    total_time_ms: Annotated[int, Field(ge=0)] | None = None
    """Wall time of the migration as libvirt measured it, in milliseconds."""
    downtime_ms: Annotated[int, Field(ge=0)] | None = None
    """How long the guest was paused for the switch-over, in milliseconds."""
    bytes_transferred: Annotated[int, Field(ge=0)] | None = None
    """Bytes sent to the target (memory and, with block copy, disks)."""
    progress_percent: Annotated[int, Field(ge=0, le=100)] | None = None
    """Rough progress while Running."""


class Migration(common.Resource):
    """A request to move a running VirtualMachine to another node."""

    kind: Literal["Migration"] = "Migration"
    """Always Migration."""
    spec: MigrationSpec
    """Which VM to move and how."""
    status: MigrationStatus | None = None
    """Observed state."""
