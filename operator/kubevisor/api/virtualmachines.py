"""VirtualMachine: desired run state, template reference or inline machine, clone or
restore source, and the status the agent reports (node, interfaces, display)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from kubevisor.api import common, conditions, machines, migrations, nodeloss


class RunStrategy(StrEnum):
    """Whether the VM should be running (the KubeVirt runStrategy vocabulary)."""

    ALWAYS = "Always"
    """Keep it running; restart it whenever it stops."""
    RERUN_ON_FAILURE = "RerunOnFailure"
    """Restart it if it crashes, leave it off if the guest shuts down cleanly."""
    MANUAL = "Manual"
    """Leave it as it is; start and stop are explicit user actions."""
    HALTED = "Halted"
    """Keep it stopped."""
    ONCE = "Once"
    """Run it once; when the guest stops the VM is Succeeded (or Failed)."""


class VirtualMachinePhase(StrEnum):
    """Lifecycle phase of a VirtualMachine."""

    PENDING = "Pending"
    SCHEDULING = "Scheduling"
    SCHEDULED = "Scheduled"
    STARTING = "Starting"
    RUNNING = "Running"
    PAUSED = "Paused"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    MIGRATING = "Migrating"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"
    TERMINATING = "Terminating"


class Rebalance(StrEnum):
    """Whether the rebalancer (the cluster's RebalancePolicy) may move the VM."""

    ALLOWED = "Allowed"
    """It may be live-migrated to balance or consolidate load (docs/rebalancing.md)."""
    NEVER = "Never"
    """It stays on its node; drains and explicit Migrations still move it."""


class EvictionStrategy(StrEnum):
    """What happens to a running VM when its node is drained (KubeVirt's names)."""

    LIVE_MIGRATE = "LiveMigrate"
    """Move it live to another node (a Migration the controller creates)."""
    NONE = "None"
    """Leave it running where it is; the VM's Evictable condition says it blocks the
    drain."""


#: Phases the agent reports when the guest stopped without being asked to: it powered
#: itself off (Succeeded) or died (Failed). runStrategy reacts to exactly these.
GUEST_STOPPED: Final = frozenset({VirtualMachinePhase.SUCCEEDED, VirtualMachinePhase.FAILED})


class VMSource(common.Model):
    """Where the VM's disks come from: a clone of another VM or a restored backup."""

    model_config = ConfigDict(
        json_schema_extra=common.cel(
            common.rule(
                "has(self.virtualMachine) != has(self.backup)",
                "exactly one of spec.source.virtualMachine or spec.source.backup must be set",
            )
        )
    )

    virtual_machine: common.LocalObjectReference | None = None
    """Clone this VirtualMachine's disks (it should be stopped)."""
    backup: common.LocalObjectReference | None = None
    """Restore the disks of this VMBackup."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.virtual_machine is None) == (self.backup is None):
            raise ValueError(
                "exactly one of spec.source.virtualMachine or spec.source.backup must be set"
            )
        return self


NEEDS_SOMETHING = (
    "a VirtualMachine needs spec.templateRef, an inline spec (memory and disks) or spec.source"
)


class VirtualMachineSpec(machines.MachineOverrides):
    """Desired state: run strategy, what to build the machine from, and overrides."""

    model_config = ConfigDict(
        json_schema_extra=common.cel(
            common.rule(
                "has(self.templateRef) || has(self.source)"
                " || (has(self.memory) && has(self.disks))",
                NEEDS_SOMETHING,
            )
        )
    )

    run_strategy: RunStrategy = RunStrategy.ALWAYS
    """Whether the VM should be running: Always, RerunOnFailure, Manual, Halted or Once."""
    template_ref: common.LocalObjectReference | None = None
    """VMTemplate to take the machine shape from; fields set here override it."""
    source: VMSource | None = None
    """Clone another VM or restore a backup instead of starting from base images."""
    eviction_strategy: EvictionStrategy = EvictionStrategy.NONE
    """On a drained (cordoned) node: LiveMigrate moves the VM away live; None leaves it
    running there and says so in its Evictable condition."""
    priority: Annotated[int, Field(ge=-1000000000, le=1000000000)] | None = None
    """Order of restart after its node is lost and fenced: higher first (unset is 0;
    ties by creation time). Only VMs with runStrategy Always or RerunOnFailure and
    shared disks are restarted elsewhere (docs/node-loss.md)."""
    rebalance: Rebalance = Rebalance.ALLOWED
    """Allowed lets the cluster's RebalancePolicy move the VM live; Never keeps it where
    it is (a VM with a nodeSelector is never moved by the rebalancer either)."""

    @model_validator(mode="after")
    def _has_a_machine(self) -> Self:
        inline = self.memory is not None and self.disks is not None
        if self.template_ref is None and self.source is None and not inline:
            raise ValueError(NEEDS_SOMETHING)
        return self


class DesiredState(StrEnum):
    """The power state the controller asks the node's agent to bring the domain to."""

    RUNNING = "Running"
    STOPPED = "Stopped"
    PAUSED = "Paused"


class InterfaceStatus(common.Model):
    """An attached network interface as the node sees it."""

    name: common.ShortString
    """NIC name from the spec."""
    network: common.ShortString | None = None
    """Segment the NIC is attached to."""
    vlan: machines.VLANId | None = None
    """VLAN id, if tagged."""
    mac: common.ShortString | None = None
    """MAC address in use (stable across restarts and migrations)."""
    ip_address: common.ShortString | None = None
    """Guest IP address, when known."""
    tap: common.ShortString | None = None
    """Host tap device name."""


class DisplayStatus(common.Model):
    """Where the graphical console can be reached (through the display gateway)."""

    type: Annotated[str, Field(max_length=32)] | None = None
    """Protocol, e.g. vnc."""
    host: common.ShortString | None = None
    """Host (node address) the display listens on."""
    port: Annotated[int, Field(ge=0, le=65535)] | None = None
    """TCP port."""


class RestoreDisk(common.Model):
    """One disk of a restore in place: the VM's disk ``name`` becomes a copy of ``path``."""

    name: common.ShortString
    """Disk name in the VM's machine."""
    path: common.PathString
    """The backup's copy (an incremental reads through its chain)."""


class VMRestoreState(common.Model):
    """Which backup's disks replace the VM's own (status.restore)."""

    backup: common.ObjectName
    """The VMBackup (same namespace, of this VM)."""
    disks: list[RestoreDisk] = Field(default_factory=list, max_length=16)
    """The disks replaced; a VM disk the backup has no copy of is left as it is."""


class VirtualMachineStatus(conditions.Status):
    """Observed state of a VirtualMachine."""

    phase: VirtualMachinePhase | None = None
    """Lifecycle phase."""
    node_name: common.ShortString | None = None
    """Node the VM is placed on."""
    interfaces: list[InterfaceStatus] = Field(default_factory=list, max_length=16)
    """Attached interfaces with MAC and, when known, IP address."""
    display: DisplayStatus | None = None
    """Graphical console endpoint."""
    console_log: common.PathString | None = None
    """Path of the serial console log on the node."""
    domain_uuid: common.ShortString | None = Field(None, alias="domainUUID")
    """libvirt domain UUID (kept across migrations)."""
    started_at: common.Timestamp | None = None
    """When the domain was last started."""
    running_at: common.Timestamp | None = None
    """When the domain was last seen to reach Running."""
    restart_required: bool | None = None
    """The spec changed in a way that needs a restart (see the RestartRequired condition)."""
    machine: machines.MachineSpec | None = None
    """The resolved machine the VM runs with (template merged with the VM's fields, MACs
    filled in), written by the controller; the agent realizes exactly this."""
    desired_state: DesiredState | None = None
    """Power state the controller asks for: Running, Stopped or Paused."""
    restart_token: Annotated[str, Field(max_length=253)] | None = None
    """Restart request copied by the controller from the kubevisor.io/restart annotation."""
    applied_restart_token: Annotated[str, Field(max_length=253)] | None = None
    """The restartToken the agent last acted on; differs from restartToken while a restart
    is pending."""
    migration: migrations.VMMigrationState | None = None
    """The Migration that moves (or last moved) this VM, written by the Migration
    reconciler; the source agent's guard against starting a second copy."""
    restore: VMRestoreState | None = None
    """A restore in place the controller judged safe (the VM was stopped), written by
    the controller from the kubevisor.io/restore-from annotation; the agent acts on it
    before the domain next starts."""
    applied_restore: common.ObjectName | None = None
    """The VMBackup whose disks the agent last restored in place (its field)."""
    recovery: nodeloss.VMRecoveryState | None = None
    """Where the VM restarts after its node was lost and fenced (or last restarted),
    written by the controller's node-loss pass (docs/node-loss.md)."""


class VirtualMachine(common.Resource):
    """A virtual machine run by libvirt/QEMU on one of the cluster's nodes."""

    kind: Literal["VirtualMachine"] = "VirtualMachine"
    """Always VirtualMachine."""
    spec: VirtualMachineSpec
    """Desired state."""
    status: VirtualMachineStatus | None = None
    """Observed state."""


def restart_request(token: str | None) -> str | None:
    """The user's part of a restart token (``"abc#2"`` -> ``"abc"``, ``"#1"`` -> None:
    no user request; pure).

    The controller appends ``#<n>`` for an automatic restart (runStrategy Always after a
    stop); the agent's retry backoff keys on this part only, so a VM the hypervisor keeps
    refusing backs off 10 s, 20 s, 40 s... instead of being retried at once after every
    automatic bump, while a user's new restart request still acts at once."""
    return None if token is None else token.partition("#")[0] or None
