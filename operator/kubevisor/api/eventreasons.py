"""Every Event kubevisor posts: which transitions of which kind, under which reason, of
which type, posted by whom. One table, read by both recorders and by the docs.

Two parts:

- :data:`PHASES`: per kind, every value of its phase enum → the Event posted on entering
  it (:class:`PhaseEvent`), or None with the reason there is none in :data:`NO_EVENT`
  (a transient phase, or one nothing happened in yet). A unit test checks no phase is
  missing.
- :data:`TYPES`: every reason an Event may carry → Normal or Warning. It holds every
  member of every condition reason enum (a condition turning to a reason is the
  user-visible transition; a test checks none is missing), and the Event-only reasons
  below. A reason the health rules (``api/health``) call Degraded is a Warning (tested).

The recorders (``controller/runtime/events``, ``agent/kube/events``) stamp the type from
:data:`TYPES` for every reason it knows, so a failure reason cannot go out as Normal from
one call site and as Warning from another.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from kubevisor.api import (
    conditions,
    desktopclaims,
    desktoppools,
    kinds,
    migrations,
    rebalancepolicies,
    storagebackends,
    virtualmachines,
    vmbackups,
    vmbackupschedules,
    vmtemplates,
    vrfs,
)


class EventType(StrEnum):
    """core/v1 Event types."""

    NORMAL = "Normal"
    WARNING = "Warning"


N, W = EventType.NORMAL, EventType.WARNING

CONTROLLER: Final = "controller"
AGENT: Final = "agent"
OBSERVER: Final = "controller (status watch)"


@dataclass(frozen=True)
class PhaseEvent:
    """The Event on entering a phase."""

    reasons: tuple[str, ...]
    """The reasons it may carry (the first when only one; a failure names its cause)."""
    by: str
    """Who posts it: :data:`CONTROLLER`, :data:`AGENT` or :data:`OBSERVER` (the
    controller's watch of statuses others write, ``controller/runtime/observing``)."""


#: Why a phase has no Event of its own.
NO_EVENT: Final[Mapping[str, str]] = {
    "initial": "the object was just created; nothing happened yet",
    "transient": "passed through within one pass; the next phase's Event follows",
    "condition": "entered with a condition whose reason is the Event",
    "deleting": "the object is being deleted (kubectl shows the deletion itself)",
}

VMP = virtualmachines.VirtualMachinePhase
MP = migrations.MigrationPhase
BP = vmbackups.VMBackupPhase
SP = vmbackupschedules.SchedulePhase
CP = desktopclaims.DesktopClaimPhase
PP = desktoppools.DesktopPoolPhase
VRFP = vrfs.VRFPhase
TP = vmtemplates.VMTemplatePhase
RP = rebalancepolicies.RebalancePhase
SBP = storagebackends.StorageBackendPhase
R = conditions.Reason
MR = migrations.MigrationReason
BR = vmbackups.BackupReason
CR = desktopclaims.ClaimReason
SR = vmbackupschedules.ScheduleReason
RR = rebalancepolicies.RebalanceReason

#: kind → phase → its Event, or the key of :data:`NO_EVENT` saying why there is none.
PHASES: Final[Mapping[str, Mapping[str, PhaseEvent | str]]] = {
    kinds.VIRTUALMACHINE.kind: {
        VMP.PENDING: "initial",
        VMP.SCHEDULING: "transient",
        VMP.SCHEDULED: PhaseEvent((R.SCHEDULED,), CONTROLLER),
        VMP.STARTING: PhaseEvent((R.STARTING,), AGENT),
        VMP.RUNNING: PhaseEvent((R.RUNNING,), OBSERVER),
        VMP.PAUSED: PhaseEvent(("Paused",), OBSERVER),
        VMP.STOPPING: "transient",
        VMP.STOPPED: PhaseEvent((R.STOPPED,), OBSERVER),
        VMP.MIGRATING: PhaseEvent(("Migrating",), OBSERVER),
        VMP.SUCCEEDED: PhaseEvent((R.SUCCEEDED,), OBSERVER),
        VMP.FAILED: PhaseEvent((R.FAILED,), OBSERVER),
        VMP.UNKNOWN: PhaseEvent(("Unknown",), OBSERVER),
        VMP.TERMINATING: "deleting",
    },
    kinds.MIGRATION.kind: {
        MP.PENDING: "initial",
        MP.SCHEDULING: PhaseEvent((MR.SCHEDULED,), CONTROLLER),
        MP.PREPARING_TARGET: PhaseEvent((MR.PREPARING_TARGET,), CONTROLLER),
        MP.TARGET_READY: PhaseEvent((MR.IN_PROGRESS,), CONTROLLER),
        MP.RUNNING: PhaseEvent((MR.IN_PROGRESS,), CONTROLLER),
        MP.SUCCEEDED: PhaseEvent((MR.SUCCEEDED,), CONTROLLER),
        MP.FAILED: PhaseEvent(
            (MR.MIGRATION_FAILED, MR.TARGET_FAILED, MR.COMPLETION_TIMEOUT), CONTROLLER
        ),
        MP.CANCELLED: PhaseEvent((MR.CANCELLED,), CONTROLLER),
    },
    kinds.VMBACKUP.kind: {
        BP.PENDING: "initial",
        BP.RUNNING: PhaseEvent(("Started",), CONTROLLER),
        BP.SUCCEEDED: PhaseEvent((BR.SUCCEEDED,), CONTROLLER),
        BP.FAILED: PhaseEvent(
            (BR.BACKUP_FAILED, BR.QUIESCE_FAILED, BR.CHECKPOINT_MISSING, BR.TARGET_UNAVAILABLE),
            CONTROLLER,
        ),
    },
    kinds.VMBACKUPSCHEDULE.kind: {
        SP.ACTIVE: PhaseEvent((SR.BACKUP_CREATED, SR.SKIPPED_BUSY, SR.PRUNED), CONTROLLER),
        SP.SUSPENDED: "condition",
        SP.INVALID: PhaseEvent((SR.INVALID_SCHEDULE,), CONTROLLER),
    },
    kinds.DESKTOPCLAIM.kind: {
        CP.PENDING: PhaseEvent((CR.WAITING_FOR_DESKTOP,), CONTROLLER),
        CP.BOUND: PhaseEvent((CR.BOUND,), CONTROLLER),
        CP.RELEASED: PhaseEvent(("LoggedOff",), CONTROLLER),
        CP.FAILED: PhaseEvent(
            (
                CR.POOL_NOT_FOUND,
                CR.POOL_EXHAUSTED,
                CR.NOT_ALLOWED,
                CR.USER_LIMIT_REACHED,
                CR.KEY_UNAVAILABLE,
                CR.DESKTOP_LOST,
            ),
            CONTROLLER,
        ),
    },
    kinds.DESKTOPPOOL.kind: {
        PP.PENDING: "initial",
        PP.SCALING: PhaseEvent(("ScalingOut", "ScalingIn"), CONTROLLER),
        PP.READY: PhaseEvent(("PoolReady",), CONTROLLER),
        PP.DEGRADED: "condition",
        PP.FAILED: "condition",
    },
    kinds.VRF.kind: {
        VRFP.PENDING: "initial",
        VRFP.PROVISIONING: "transient",
        VRFP.READY: PhaseEvent(("Ready",), OBSERVER),
        VRFP.DEGRADED: "condition",
        VRFP.FAILED: "condition",
        VRFP.TERMINATING: "deleting",
    },
    kinds.VMTEMPLATE.kind: {
        TP.PENDING: "initial",
        TP.READY: "condition",
        TP.FAILED: "condition",
    },
    kinds.REBALANCEPOLICY.kind: {
        RP.DISABLED: "condition",
        RP.MOVING: PhaseEvent((RR.MOVING,), CONTROLLER),
        RP.BALANCED: "condition",
        RP.CONSOLIDATED: PhaseEvent(("PowerOff", "PowerOn"), CONTROLLER),
    },
    kinds.STORAGEBACKEND.kind: {SBP.ACCEPTED: "condition"},
}

#: Reasons only Events carry (no condition has them), with their type.
EVENT_ONLY: Final[Mapping[str, EventType]] = {
    "Paused": N,
    "Migrating": N,
    "Unknown": W,
    "Migrated": N,
    "RestartRequired": N,
    "NodeRecovered": N,
    "PowerOff": N,
    "PowerOn": N,
    "ScalingOut": N,
    "ScalingIn": N,
    "PoolReady": N,
    "LoggedOff": N,
    "Started": N,
    "Ready": N,
    "StorageReachable": N,
}

#: Condition reasons that are no failure (everything else in the enums is a Warning).
NORMAL_REASONS: Final = frozenset(
    {
        R.RESTORE_PENDING,
        R.EVICTING,
        R.SCHEDULED,
        R.WAITING_FOR_TABLE,
        R.STARTING,
        R.RUNNING,
        R.STOPPED,
        R.ACCEPTED,
        R.SESSIONS_UP,
        R.IN_PROGRESS,
        R.SUCCEEDED,
        R.CANCELLED,
        R.SPEC_CHANGED,
        R.BOUND,
        R.AS_EXPECTED,
        MR.CLUSTER_LIMIT,
        MR.NODE_OUTBOUND_LIMIT,
        MR.VM_ALREADY_MIGRATING,
        MR.BACKUP_IN_PROGRESS,
        MR.SCHEDULED,
        MR.PREPARING_TARGET,
        MR.POST_COPY_STARTED,
        BR.MIGRATION_IN_PROGRESS,
        CR.WAITING_FOR_DESKTOP,
        CR.IDLE_TIMEOUT,
        CR.DISCONNECTED_TIMEOUT,
        CR.SESSION_TIMEOUT,
        SR.SCHEDULED,
        SR.SUSPENDED,
        SR.BACKUP_CREATED,
        SR.SKIPPED_BUSY,
        SR.PRUNED,
        RR.BALANCED,
        RR.MOVING,
        RR.CONSOLIDATED,
        RR.DISABLED,
        RR.EMPTIED,
        RR.WOKEN,
    }
)

#: Every condition reason enum (a test checks :data:`TYPES` holds all of their members).
REASON_ENUMS: Final[tuple[Iterable[StrEnum], ...]] = (R, MR, BR, CR, SR, RR)


def _types() -> dict[str, EventType]:
    out: dict[str, EventType] = {}
    for enum in REASON_ENUMS:
        for member in enum:
            out[str(member)] = N if member in NORMAL_REASONS else W
    out.update(EVENT_ONLY)
    return out


#: reason → Event type, for every reason an Event may carry.
TYPES: Final[Mapping[str, EventType]] = _types()


def type_of(reason: str, *, default: str) -> str:
    """The Event type of ``reason`` from :data:`TYPES`; ``default`` for a reason the table
    does not know (the caller's own choice)."""
    known = TYPES.get(reason)
    return str(known) if known is not None else default


def phase_event(kind: str, old: str | None, new: str, *, by: str) -> tuple[str, str] | None:
    """(type, reason) of the Event ``by`` posts for an object of ``kind`` whose phase went
    ``old`` → ``new`` (``old`` None: not seen before, so no transition is known), or None
    (pure)."""
    if old is None or old == new:
        return None
    entry = PHASES.get(kind, {}).get(new)
    if not isinstance(entry, PhaseEvent) or entry.by != by:
        return None
    reason = entry.reasons[0]
    return str(TYPES[reason]), str(reason)
