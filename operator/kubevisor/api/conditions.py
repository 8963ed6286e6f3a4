"""Status conditions: the model, the documented types and reasons, and ``set_condition``.

A problem the user can fix is a condition with a reason and a sentence. Condition types
and reasons are enums so the controller, agent and CLI agree on spelling; the wire type
stays a plain string so new values never break old readers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field

from kubevisor.api import common

ConditionStatus = Literal["True", "False", "Unknown"]


class ConditionType(StrEnum):
    """Condition types used across kinds. Ready summarises the others and sorts first."""

    READY = "Ready"
    """The object does what its spec asks (VM running, VRF programmed, claim bound...)."""
    SCHEDULED = "Scheduled"
    """A node has been chosen (VirtualMachine, Migration target, VRF nodes)."""
    RESTART_REQUIRED = "RestartRequired"
    """The spec changed in a way that only takes effect after a restart of the VM."""
    TEMPLATE_RESOLVED = "TemplateResolved"
    """The referenced VMTemplate (or clone/restore source) was found and applied."""
    DISKS_READY = "DisksReady"
    """The VM's disks exist on its node."""
    NETWORK_READY = "NetworkReady"
    """The taps/segments (VM) or interfaces and routes (VRF) are in place."""
    GUEST_READY = "GuestReady"
    """VM, only while True (reason AsExpected): the guest printed its ready line on the
    serial console since it last booted (``api/guestready``); absent otherwise. An
    Application pool's server takes sessions only then."""
    MIGRATING = "Migrating"
    """A live migration of this VM is in progress."""
    EVICTABLE = "Evictable"
    """The VM can leave its node when the node is drained (evictionStrategy LiveMigrate
    and a target that fits); False says why it blocks the drain."""
    ROUTING_SESSIONS = "RoutingSessions"
    """VRF: whether every routing session its daemons have configured is up on every
    node (reason SessionsUp, or SessionDown naming the node and session); absent while
    no daemon reports a session."""
    ANNOTATIONS_VALID = "AnnotationsValid"
    """Only while False (reason InvalidAnnotation): an annotation the controller reads
    (kubevisor.io/restart, paused, power) has a value it ignores; the message says why."""
    NODE_LOST = "NodeLost"
    """Only while the VM's node is lost (its Lease expired): True, and the reason says
    what happens to the VM (AwaitingFence, Recovering, NotRecoverable, NotRestarted,
    Unschedulable); see docs/node-loss.md."""
    SSH_KEYS_READY = "SSHKeysReady"
    """Only on a VM with access.sshKeySecret: whether its keys were read and put on the
    kernel command line (False: SecretNotFound, InvalidSSHKeys, KernelBootRequired; the
    VM waits, not started without its keys)."""
    PROGRESSING = "Progressing"
    """A long operation (backup, migration, pool scaling) is under way."""
    COMPLETED = "Completed"
    """A one-shot operation (backup, migration) finished; see the reason for how."""
    RESTORED = "Restored"
    """Only while the kubevisor.io/restore-from annotation is set: whether the VM's disks
    were restored in place from that VMBackup (False says why not yet)."""


class Reason(StrEnum):
    """Reasons: CamelCase words explaining a condition's status."""

    VM_NOT_STOPPED = "VMNotStopped"
    """Restored=False: a restore in place needs the VM stopped; nothing was changed."""
    RESTORE_PENDING = "RestorePending"
    """Restored=False: the VM is stopped; its node's agent replaces the disks from the
    backup before the domain next starts."""
    NOT_IMPLEMENTED = "NotImplemented"
    """The spec asks for a feature this version does not implement yet."""
    INVALID_SPEC = "InvalidSpec"
    """The spec passed schema validation but cannot be acted on; the message says why."""
    TEMPLATE_NOT_FOUND = "TemplateNotFound"
    """spec.templateRef names a VMTemplate that does not exist."""
    SOURCE_NOT_FOUND = "SourceNotFound"
    """spec.source names a VirtualMachine or VMBackup that does not exist."""
    IMAGE_NOT_FOUND = "ImageNotFound"
    """A disk's base image is missing on the node."""
    EVICTION_STRATEGY_NONE = "EvictionStrategyNone"
    """Evictable=False: the VM's node is cordoned but spec.evictionStrategy is None, so
    it stays there."""
    NOT_MIGRATABLE = "NotMigratable"
    """Evictable=False: the VM asks for LiveMigrate but cannot move now (not running, or
    its drain Migration failed); the message says why."""
    EVICTING = "Evicting"
    """Evictable=True: the VM's node is cordoned and a Migration moves it away."""
    UNSCHEDULABLE = "Unschedulable"
    """No node fits (capacity, nodeSelector, GPUs, networks)."""
    SCHEDULED = "Scheduled"
    """A node was chosen."""
    NODE_LOST = "NodeLost"
    """The node's agent stopped renewing its Lease."""
    AWAITING_FENCE = "AwaitingFence"
    """NodeLost: the node is not fenced yet (no out-of-service taint), so the VM is not
    started anywhere else: its old copy may still be writing its disks."""
    RECOVERING = "Recovering"
    """NodeLost: the node is fenced; the VM restarts on the node the message names."""
    NOT_RECOVERABLE = "NotRecoverable"
    """NodeLost: the VM has node-local disks, so it cannot restart elsewhere; it keeps
    them and runs again when its node returns."""
    NOT_RESTARTED = "NotRestarted"
    """NodeLost: the VM's runStrategy (or an unfinished migration) does not restart it
    elsewhere."""
    NETWORK_UNAVAILABLE = "NetworkUnavailable"
    """A network segment or VLAN the object needs cannot be set up on the node."""
    STORAGE_UNREACHABLE = "StorageUnreachable"
    """The target node cannot reach the VM's storage and block copy is not allowed."""
    RTT_TOO_HIGH = "RTTTooHigh"
    """The measured round-trip time to the target exceeds the migration policy limit."""
    BACKEND_UNAVAILABLE = "BackendUnavailable"
    """The node's kernel lacks what was asked for: a VRF backend (l3mdev), or 802.1Q for
    a VLAN (a VM's VLAN NIC then stays on a segment local to its node; a VRF with a VLAN
    interface is refused)."""
    TABLE_CONFLICT = "TableConflict"
    """The requested routing table is already used by another VRF on a node."""
    MAC_CONFLICT = "MACConflict"
    """Another VM (named in the message) already uses this NIC's MAC on the same segment;
    the later VM is not placed."""
    INTERFACE_CONFLICT = "InterfaceConflict"
    """Another VRF already claims this segment or host interface on a shared node."""
    TABLES_EXHAUSTED = "TablesExhausted"
    """No free routing table is left in the automatic allocation range."""
    WAITING_FOR_TABLE = "WaitingForTable"
    """The controller has not decided the VRF's current generation yet (no table)."""
    SEGMENT_MISSING = "SegmentMissing"
    """A VRF interface's segment bridge (or host interface) is not on the node."""
    DEVICE_MISSING = "DeviceMissing"
    """A route's device is not among the VRF's interfaces on the node."""
    KERNEL_ERROR = "KernelError"
    """The node's kernel refused a change (netlink or cgroup); the message quotes it."""
    NOT_CONVERGED = "NotConverged"
    """What the kernel holds after applying still differs from the plan."""
    NODE_NOT_READY = "NodeNotReady"
    """A node reports the object not ready without saying why."""
    POOL_NOT_FOUND = "PoolNotFound"
    """spec.poolRef names a DesktopPool that does not exist."""
    POOL_EXHAUSTED = "PoolExhausted"
    """The pool is at max and has no free desktop."""
    STARTING = "Starting"
    """The domain is being defined and started."""
    RUNNING = "Running"
    """The domain is running."""
    STOPPED = "Stopped"
    """The domain is shut off as requested."""
    FAILED = "Failed"
    """An operation failed; the message carries the underlying error."""
    HYPERVISOR_REFUSED = "HypervisorRefused"
    """The node's hypervisor (libvirt/QEMU) refused to define or start the domain (memory
    too small, unknown CPU model, missing kernel file, …); the message quotes it. Retried
    with capped exponential backoff (10 s doubling to 5 min)."""
    HYPERVISOR_UNAVAILABLE = "HypervisorUnavailable"
    """The node's agent lost its connection to libvirtd (stopped, crashed, restarting) and
    is reconnecting with backoff; the VM's phase is Unknown until it is back."""
    ACCEPTED = "Accepted"
    """The object is valid and in use; what is reached where is reported elsewhere (a
    StorageBackend: in each node's Lease)."""
    STORAGE_FAILED = "StorageFailed"
    """A disk's storage backend refused the node (NFS server unreachable, iSCSI login or
    CHAP refused); the message quotes the client's error. Nothing was deleted."""
    SECRET_NOT_FOUND = "SecretNotFound"
    """A Secret the object references (display.passwordSecretRef) does not exist, or lacks
    the key."""
    INVALID_SSH_KEYS = "InvalidSSHKeys"
    """The VM's access.sshKeySecret holds no OpenSSH public key line, or too many bytes
    of them for the kernel command line."""
    KERNEL_BOOT_REQUIRED = "KernelBootRequired"
    """access.sshKeySecret needs boot.kernel: the keys travel on the kernel command
    line."""
    FIRMWARE_UNAVAILABLE = "FirmwareUnavailable"
    """The requested firmware (firmware: uefi) is not installed on the node."""
    INVALID_ANNOTATION = "InvalidAnnotation"
    """An annotation whose value is copied into status (kubevisor.io/restart) is not a
    valid value; it is ignored and the message says why."""
    DAEMON_UNAVAILABLE = "DaemonUnavailable"
    """The spec asks for a routing daemon (routing.daemon) this node cannot run (not
    installed, or not on this backend: FRR, or a routing.config of the user's own, on the
    l3mdev backend); its config is not applied."""
    INVALID_DAEMON_CONFIG = "InvalidDaemonConfig"
    """The daemon's own parser (bird -p) refused routing.config; the message quotes it.
    A daemon already running keeps its previous config."""
    DAEMON_FAILED = "DaemonFailed"
    """The VRF's routing daemon is not running (it died or could not start); it is
    restarted with backoff (1 s doubling to 60 s)."""
    DAEMON_OUT_OF_MEMORY = "DaemonOutOfMemory"
    """The VRF's routing daemon was killed by the kernel for going over the VRF's memory
    limit (resources.memory, its cgroup's OOM killer: the node and other VRFs are not
    touched); it is restarted with backoff like a DaemonFailed one."""
    SESSION_DOWN = "SessionDown"
    """A routing session the VRF's daemon has configured (a BGP neighbour, an OSPF
    instance) is not up on a node; the message names the node and the session."""
    SESSIONS_UP = "SessionsUp"
    """Every routing session the VRF's daemons have configured is up."""
    IN_PROGRESS = "InProgress"
    """The operation is under way."""
    SUCCEEDED = "Succeeded"
    """The operation completed successfully."""
    CANCELLED = "Cancelled"
    """The operation was cancelled by the user."""
    SPEC_CHANGED = "SpecChanged"
    """The spec changed in a way that needs a restart to apply."""
    BOUND = "Bound"
    """The claim is bound to a desktop."""
    AS_EXPECTED = "AsExpected"
    """Nothing to report: the condition holds."""


REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(common.Model):
    """One aspect of an object's state (the Kubernetes metav1.Condition shape)."""

    type: Annotated[str, Field(min_length=1, max_length=316)]
    """Condition type in CamelCase, e.g. Ready, Scheduled, RestartRequired."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: Annotated[str, Field(min_length=1, max_length=1024, pattern=REASON_PATTERN)]
    """Machine-readable CamelCase reason for the last transition, e.g. TemplateNotFound."""
    message: Annotated[str, Field(max_length=32768)]
    """Human-readable sentence about the transition; empty when there is nothing to add."""
    last_transition_time: common.Timestamp
    """When status last changed (not when reason or message changed)."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """metadata.generation the condition was computed from."""


CONDITIONS_SCHEMA_EXTRA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, the form metav1.Time uses on the wire."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    *,
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """Return a new condition list with ``type`` set; the input is not modified.

    ``lastTransitionTime`` changes only when ``status`` flips, so "since when" stays
    meaningful across repeated reconciles. ``observedGeneration`` is stamped with
    ``generation``. Order: Ready first, then the others by type, so patches are stable.
    """
    previous = next((c for c in conditions if c.get("type") == type), None)
    if previous is not None and previous.get("status") == status:
        transition = previous.get("lastTransitionTime") or format_time(now)
    else:
        transition = format_time(now)
    updated: dict[str, Any] = {
        "type": str(type),
        "status": status,
        "reason": str(reason),
        "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        updated["observedGeneration"] = generation
    others = [dict(c) for c in conditions if c.get("type") != type]
    return sort_conditions([*others, updated])


def sort_conditions(conditions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ready first, then alphabetical by type."""
    return sorted(
        conditions,
        key=lambda c: (c.get("type") != ConditionType.READY, str(c.get("type", ""))),
    )


def get_condition(conditions: list[dict[str, Any]], type: str) -> dict[str, Any] | None:
    """The condition of that type, or None."""
    return next((c for c in conditions if c.get("type") == type), None)


def is_true(conditions: list[dict[str, Any]], type: str) -> bool:
    """Whether the condition exists with status "True"."""
    found = get_condition(conditions, type)
    return found is not None and found.get("status") == "True"


class Status(common.Model):
    """Fields every kind's status carries; each kind adds its own ``phase`` enum."""

    conditions: list[Condition] = Field(
        default_factory=list, max_length=32, json_schema_extra=CONDITIONS_SCHEMA_EXTRA
    )
    """Current state as conditions; Ready summarises."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """metadata.generation the status was last computed from."""


#: Ready reasons with which the controller refuses a VRF outright; agents do not realize
#: a VRF refused with one of these. Shared here because controller and agent both need it.
VRF_REFUSALS: frozenset[str] = frozenset(
    {
        Reason.TABLE_CONFLICT,
        Reason.INTERFACE_CONFLICT,
        Reason.INVALID_SPEC,
        Reason.TABLES_EXHAUSTED,
    }
)
