"""Migration: move a running VM to another node, live, keeping its MAC and state.

The status follows KubeVirt's phases (docs/migration.md): each phase is stamped once in
``phaseTransitions`` when first entered, ``progress`` is refreshed about once a second
while Running, and the final figures (time, downtime, bytes, mode) are written once at the
end. Condition reasons are :class:`MigrationReason`; the wire type stays a string.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import Field

from kubevisor.api import common, conditions


class MigrationPhase(StrEnum):
    """Lifecycle phase of a migration, in the order a successful one passes them."""

    PENDING = "Pending"
    """Accepted; waiting for preconditions or a free slot (the Scheduled condition says
    which)."""
    SCHEDULING = "Scheduling"
    """A slot is free; the controller is choosing (or checking) the target node."""
    PREPARING_TARGET = "PreparingTarget"
    """The target agent sets up segments, disk paths and base images."""
    TARGET_READY = "TargetReady"
    """The target agent is ready to receive; the source agent may start copying."""
    RUNNING = "Running"
    """libvirt is copying memory (and disks with block copy); see status.progress."""
    SUCCEEDED = "Succeeded"
    """The guest runs on the target; the source holds no copy."""
    FAILED = "Failed"
    """The migration stopped; the VM keeps running on the source (see conditions)."""
    CANCELLED = "Cancelled"
    """spec.cancel was set or the Migration deleted; the VM keeps running on the source."""


#: Phases after which nothing changes any more.
FINAL_PHASES: Final = frozenset(
    {MigrationPhase.SUCCEEDED, MigrationPhase.FAILED, MigrationPhase.CANCELLED}
)
#: Phases that hold a parallel-migration slot (everything between Pending and the end).
ACTIVE_PHASES: Final = frozenset(
    {
        MigrationPhase.SCHEDULING,
        MigrationPhase.PREPARING_TARGET,
        MigrationPhase.TARGET_READY,
        MigrationPhase.RUNNING,
    }
)


class MigrationMode(StrEnum):
    """How the memory moved."""

    PRE_COPY = "PreCopy"
    """Copied while the guest ran on the source, then a short pause to switch."""
    POST_COPY = "PostCopy"
    """Switched early: the guest ran on the target and fetched the rest on demand."""


class MigrationReason(StrEnum):
    """Reasons on a Migration's conditions (Scheduled, Progressing, Completed, Ready).

    Refusals (preconditions, limits) go on Scheduled with status False; the message is a
    sentence naming the node and the number. Values equal to a :class:`conditions.Reason`
    spell the same thing on every kind.
    """

    # -- waiting for a slot (Pending) -------------------------------------------------
    CLUSTER_LIMIT = "ClusterLimitReached"
    """As many migrations as the cluster allows are running; this one waits."""
    NODE_OUTBOUND_LIMIT = "NodeOutboundLimitReached"
    """The source node already sends as many migrations as allowed; this one waits."""
    VM_ALREADY_MIGRATING = "VMAlreadyMigrating"
    """Another unfinished Migration moves the same VM; this one waits for it."""
    BACKUP_IN_PROGRESS = "BackupInProgress"
    """A VMBackup of the same VM runs (or was asked for first); this one waits for it
    (``vmbackups.waits_for``)."""
    # -- the VM itself ----------------------------------------------------------------
    VM_NOT_FOUND = "VMNotFound"
    """spec.vmName names no VirtualMachine in the namespace."""
    VM_NOT_RUNNING = "VMNotRunning"
    """The VM is not Running (only a running guest is migrated live)."""
    # -- the target -------------------------------------------------------------------
    TARGET_NOT_FOUND = "TargetNotFound"
    """spec.targetNode names no node with a kubevisor agent."""
    TARGET_IS_SOURCE = "TargetIsSource"
    """spec.targetNode is the node the VM already runs on."""
    NODE_LOST = conditions.Reason.NODE_LOST.value
    """The target's agent stopped renewing its Lease."""
    TARGET_CORDONED = "TargetCordoned"
    """The target's Node is unschedulable (``kubectl cordon`` / ``kubevisor drain``): no VM
    moves onto it."""
    NODE_SELECTOR_MISMATCH = "NodeSelectorMismatch"
    """The target lacks a label the VM's nodeSelector asks for."""
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"
    """The target lacks free CPU, memory or GPUs for the VM."""
    NETWORK_UNAVAILABLE = conditions.Reason.NETWORK_UNAVAILABLE.value
    """The target does not offer a network (and so its VLANs) one of the VM's NICs uses."""
    STORAGE_UNREACHABLE = conditions.Reason.STORAGE_UNREACHABLE.value
    """A disk is on node-local storage (or shared storage the target does not mount) and
    the policy does not allow block copy."""
    RTT_TOO_HIGH = conditions.Reason.RTT_TOO_HIGH.value
    """The source measured a round-trip time to the target above policy.maxRTTMs."""
    RTT_UNKNOWN = "RTTUnknown"
    """The source has not reported a round-trip time to the target yet."""
    CPU_MODEL_UNSUPPORTED = "CPUModelUnsupported"
    """The target cannot run the VM's CPU model."""
    MIGRATION_URI_MISSING = "MigrationURIMissing"
    """The target's agent reports no migration URI, so the source cannot reach it."""
    NO_TARGET = "NoTargetFits"
    """No node passes every precondition; the message lists each node's refusal."""
    SCHEDULED = conditions.Reason.SCHEDULED.value
    """A target was chosen and a slot is held."""
    # -- running and the end ----------------------------------------------------------
    PREPARING_TARGET = "PreparingTarget"
    """The target agent is setting up segments and disks."""
    IN_PROGRESS = conditions.Reason.IN_PROGRESS.value
    """Memory (and disks) are being copied."""
    POST_COPY_STARTED = "PostCopyStarted"
    """Pre-copy did not converge; the guest now runs on the target, fetching pages."""
    SUCCEEDED = conditions.Reason.SUCCEEDED.value
    """The guest runs on the target."""
    CANCELLED = conditions.Reason.CANCELLED.value
    """Cancelled by the user; the VM stays on the source."""
    COMPLETION_TIMEOUT = "CompletionTimeout"
    """Not finished within policy.completionTimeoutSeconds; aborted, VM on the source."""
    TARGET_FAILED = "TargetFailed"
    """The target agent or libvirtd failed or vanished; the VM stays on the source."""
    MIGRATION_FAILED = "MigrationFailed"
    """libvirt reported an error; the message carries it."""


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


class PhaseTransition(common.Model):
    """When the migration first entered one phase."""

    phase: MigrationPhase
    """The phase entered."""
    time: common.Timestamp
    """When it was entered."""


class MigrationProgress(common.Model):
    """A sample of libvirt's job statistics while Running (refreshed about once a second).

    Fields libvirt did not report are left unset rather than guessed.
    """

    data_total_bytes: Annotated[int, Field(ge=0)] | None = None
    """Bytes to move in all (memory plus disks with block copy); grows as pages dirty."""
    data_processed_bytes: Annotated[int, Field(ge=0)] | None = None
    """Bytes moved so far."""
    data_remaining_bytes: Annotated[int, Field(ge=0)] | None = None
    """Bytes still to move."""
    memory_iterations: Annotated[int, Field(ge=0)] | None = None
    """Passes over guest memory so far (1 is the first full copy)."""
    dirty_rate_bytes_per_second: Annotated[int, Field(ge=0)] | None = None
    """How fast the guest dirties memory."""
    transfer_rate_bytes_per_second: Annotated[int, Field(ge=0)] | None = None
    """How fast memory moves to the target."""
    percent: Annotated[int, Field(ge=0, le=100)] | None = None
    """Processed share of the total so far (the total may still grow)."""
    eta_seconds: Annotated[int, Field(ge=0)] | None = None
    """Remaining bytes over the transfer rate; unset while the rate is unknown."""
    elapsed_ms: Annotated[int, Field(ge=0)] | None = None
    """Time since the job started, as libvirt counts it."""
    updated_at: common.Timestamp | None = None
    """When this sample was taken."""


class SourceState(StrEnum):
    """What the source node's agent reports of the libvirt migration job it drives."""

    MIGRATING = "Migrating"
    """The job runs (memory, and disks with block copy, are being copied)."""
    COMPLETED = "Completed"
    """libvirt finished the job: the domain left the source (undefined there)."""
    FAILED = "Failed"
    """The job failed; the domain still runs on the source (reason and message say why)."""
    ABORTED = "Aborted"
    """The agent aborted the job (cancel, deletion, completion timeout); the domain still
    runs on the source."""


class TargetState(StrEnum):
    """What the target node's agent reports of its side."""

    PREPARING = "Preparing"
    """Setting up segments, disk paths and (for block copy) the disks the copy fills."""
    READY = "Ready"
    """Ready to receive the domain."""
    FAILED = "Failed"
    """Could not prepare (reason and message say why); nothing was left behind."""
    CLEANED_UP = "CleanedUp"
    """After a failed or cancelled migration: no domain, no taps and no disks it created
    for this migration are left on the target."""


class SourceReport(common.Model):
    """The source agent's report (field manager ``SOURCE_FIELD_MANAGER``)."""

    node: common.ShortString
    """The reporting node (the migration's source)."""
    state: SourceState
    """Where the libvirt job stands."""
    reason: common.ShortString | None = None
    """A :class:`MigrationReason` value for Failed and Aborted."""
    message: Annotated[str, Field(max_length=4096)] | None = None
    """A sentence, with libvirt's own words for a failure."""
    time: common.Timestamp | None = None
    """When the state was entered."""


class TargetReport(common.Model):
    """The target agent's report (field manager ``TARGET_FIELD_MANAGER``)."""

    node: common.ShortString
    """The reporting node (the migration's target)."""
    state: TargetState
    """Where the target side stands."""
    domain_active: bool | None = None
    """The VM's domain runs on the target (not the paused incoming shell): after a
    restart this tells the controller the outcome even if the source never said."""
    reason: common.ShortString | None = None
    """A :class:`MigrationReason` (or conditions.Reason) value for Failed."""
    message: Annotated[str, Field(max_length=4096)] | None = None
    """A sentence saying what was prepared or what failed."""
    time: common.Timestamp | None = None
    """When the state was entered."""


_TRANSITIONS_SCHEMA_EXTRA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["phase"],
}


class MigrationStatus(conditions.Status):
    """Observed state of a migration."""

    phase: MigrationPhase | None = None
    """Lifecycle phase."""
    phase_transitions: list[PhaseTransition] = Field(
        default_factory=list, max_length=16, json_schema_extra=_TRANSITIONS_SCHEMA_EXTRA
    )
    """When each phase was first entered, in order."""
    source_node: common.ShortString | None = None
    """Node the VM ran on when the migration started."""
    target_node: common.ShortString | None = None
    """Node the VM is moving to."""
    started_at: common.Timestamp | None = None
    """When memory copying started."""
    completed_at: common.Timestamp | None = None
    """When the migration ended (in any final phase)."""
    progress: MigrationProgress | None = None
    """The latest job statistics while Running; the last sample stays after the end."""
    mode: MigrationMode | None = None
    """PreCopy or PostCopy, once the migration ended."""
    total_time_ms: Annotated[int, Field(ge=0)] | None = None
    """Wall time of the migration as libvirt measured it, in milliseconds."""
    downtime_ms: Annotated[int, Field(ge=0)] | None = None
    """How long the guest was paused for the switch-over, as libvirt reports it, in ms."""
    bytes_transferred: Annotated[int, Field(ge=0)] | None = None
    """Bytes sent to the target (memory and, with block copy, disks)."""
    source: SourceReport | None = None
    """The source agent's report of the libvirt job (written by that agent only)."""
    target: TargetReport | None = None
    """The target agent's report of its side (written by that agent only)."""


class Migration(common.Resource):
    """A request to move a running VirtualMachine to another node."""

    kind: Literal["Migration"] = "Migration"
    """Always Migration."""
    spec: MigrationSpec
    """Which VM to move and how."""
    status: MigrationStatus | None = None
    """Observed state."""


def enter_phase(
    transitions: Sequence[PhaseTransition], phase: MigrationPhase, *, now: datetime
) -> list[PhaseTransition]:
    """The transition list with ``phase`` stamped at ``now`` unless it already has a stamp
    (a re-run reconcile or a restarted controller must not move "since when"). Pure; the
    input is not modified."""
    if any(t.phase == phase for t in transitions):
        return list(transitions)
    return [*transitions, PhaseTransition(phase=phase, time=now)]


# -- who writes what (docs/architecture.md, "Migration") --------------------------------

#: Field manager of the controller's Migration status fields and of ``status.migration``
#: on the VirtualMachine (distinct from the VM reconciler's ``kubevisor-controller``, so
#: neither apply removes the other's fields).
CONTROLLER_FIELD_MANAGER: Final = "kubevisor-controller-migrations"
#: Field manager of the source agent's Migration status fields.
SOURCE_FIELD_MANAGER: Final = "kubevisor-agent-migration-source"
#: Field manager of the target agent's Migration status fields.
TARGET_FIELD_MANAGER: Final = "kubevisor-agent-migration-target"

#: Migration status fields the controller owns (always applied as one set).
CONTROLLER_FIELDS: Final = (
    "phase",
    "phaseTransitions",
    "sourceNode",
    "targetNode",
    "completedAt",
    "conditions",
)
#: Migration status fields the source agent owns.
SOURCE_FIELDS: Final = (
    "source",
    "startedAt",
    "progress",
    "mode",
)
#: The completed job's figures: the target's after pre-copy (with UNDEFINE_SOURCE libvirt
#: keeps them on the destination only), the source's after post-copy (then the
#: destination keeps none — measured — and the source takes them from libvirt's
#: JOB_COMPLETED event). Written with force, so the one that has them owns them.
FIGURE_FIELDS: Final = ("totalTimeMs", "downtimeMs", "bytesTransferred")
#: Migration status fields the target agent owns.
TARGET_FIELDS: Final = ("target", *FIGURE_FIELDS)


class VMMigrationState(common.Model):
    """``status.migration`` of a VirtualMachine: the Migration that moves it (or last
    moved it). Written by the Migration reconciler (``CONTROLLER_FIELD_MANAGER``) from
    Scheduling on; it stays after the end as the record of the last migration.

    The node's agent reads it as a guard: while it names this node as ``sourceNode``
    and ``phase`` is not Failed or Cancelled, a VM placed here whose domain is missing is
    left alone (it left, or is leaving, by migration) instead of being started again, so
    two running copies never exist. On Succeeded the VM reconciler moves ``nodeName`` and
    the ``kubevisor.io/node`` label to ``targetNode`` (labels first, then status).
    """

    name: common.ObjectName
    """The Migration (same namespace)."""
    source_node: common.ShortString
    """Node the VM runs on when the migration starts."""
    target_node: common.ShortString
    """Node the VM moves to."""
    phase: MigrationPhase
    """The Migration's phase, as its reconciler last wrote it."""


def leaving(state: VMMigrationState | None, node: str) -> bool:
    """True while ``node`` must not (re)start the VM's domain because the VM is leaving
    it by migration: ``node`` is the source and the migration did not fail or get
    cancelled. Pure; the one rule both the agent's guard and the tests use."""
    if state is None or state.source_node != node:
        return False
    return state.phase not in (MigrationPhase.FAILED, MigrationPhase.CANCELLED)
