"""The registry of kinds: per kind its model, names and printer columns.

The CRD generator, the controller's watches and the CLI all iterate this one list, so a
new kind is added in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kubevisor.api import (
    common,
    conditions,
    desktopclaims,
    desktoppools,
    groups,
    migrations,
    rebalancepolicies,
    storagebackends,
    virtualmachines,
    vmbackups,
    vmbackupschedules,
    vmtemplates,
    vrfs,
)

ColumnType = Literal["string", "integer", "number", "boolean", "date"]


@dataclass(frozen=True)
class PrinterColumn:
    """A column of ``kubectl get`` output (CRD additionalPrinterColumns)."""

    name: str
    json_path: str
    type: ColumnType = "string"
    description: str = ""
    priority: int = 0
    """0 shows in the default view, 1 only with ``-o wide``."""


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date", "Time since creation.")


@dataclass(frozen=True)
class Kind:
    """One custom resource kind and how it is exposed."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    model: type[common.Resource]
    spec_model: type[common.Model]
    status_model: type[conditions.Status]
    printer_columns: tuple[PrinterColumn, ...]
    selectable_fields: tuple[str, ...] = ()
    """JSON paths usable in field selectors (e.g. ``spec.vmName=web``)."""
    scope: Literal["Namespaced", "Cluster"] = "Namespaced"

    @property
    def crd_name(self) -> str:
        """``<plural>.kubevisor.io``, the CustomResourceDefinition's name."""
        return f"{self.plural}.{groups.GROUP}"

    @property
    def list_kind(self) -> str:
        """The kind of list responses."""
        return f"{self.kind}List"


def _phase(description: str) -> PrinterColumn:
    return PrinterColumn("Phase", ".status.phase", "string", description)


VMTEMPLATE = Kind(
    kind="VMTemplate",
    plural="vmtemplates",
    singular="vmtemplate",
    short_names=("vmt",),
    model=vmtemplates.VMTemplate,
    spec_model=vmtemplates.MachineSpec,
    status_model=vmtemplates.VMTemplateStatus,
    printer_columns=(
        PrinterColumn("CPU", ".spec.cpu.cores", "integer", "Virtual CPUs."),
        PrinterColumn("Memory", ".spec.memory", "string", "Guest memory."),
        AGE,
    ),
)
VIRTUALMACHINE = Kind(
    kind="VirtualMachine",
    plural="virtualmachines",
    singular="virtualmachine",
    short_names=("kvvm",),
    model=virtualmachines.VirtualMachine,
    spec_model=virtualmachines.VirtualMachineSpec,
    status_model=virtualmachines.VirtualMachineStatus,
    printer_columns=(
        _phase("Lifecycle phase."),
        PrinterColumn("Node", ".status.nodeName", "string", "Node the VM is placed on."),
        PrinterColumn("IP", ".status.interfaces[0].ipAddress", "string", "First NIC's IP."),
        PrinterColumn("Strategy", ".spec.runStrategy", "string", "Run strategy.", priority=1),
        AGE,
    ),
    selectable_fields=(".status.nodeName",),
)
VMBACKUP = Kind(
    kind="VMBackup",
    plural="vmbackups",
    singular="vmbackup",
    short_names=("vmbk",),
    model=vmbackups.VMBackup,
    spec_model=vmbackups.VMBackupSpec,
    status_model=vmbackups.VMBackupStatus,
    printer_columns=(
        PrinterColumn("VM", ".spec.vmName", "string", "VirtualMachine backed up."),
        PrinterColumn("Mode", ".spec.mode", "string", "Full or Incremental."),
        _phase("Lifecycle phase."),
        PrinterColumn("Progress", ".status.progress.percent", "integer", "Percent copied."),
        PrinterColumn("Size", ".status.sizeBytes", "integer", "Bytes written.", priority=1),
        PrinterColumn("Completed", ".status.completedAt", "date", "When copying finished."),
        AGE,
    ),
    selectable_fields=(".spec.vmName",),
)
VMBACKUPSCHEDULE = Kind(
    kind="VMBackupSchedule",
    plural="vmbackupschedules",
    singular="vmbackupschedule",
    short_names=("vmbks",),
    model=vmbackupschedules.VMBackupSchedule,
    spec_model=vmbackupschedules.VMBackupScheduleSpec,
    status_model=vmbackupschedules.VMBackupScheduleStatus,
    printer_columns=(
        PrinterColumn("VM", ".spec.vmName", "string", "VirtualMachine backed up."),
        PrinterColumn("Schedule", ".spec.schedule", "string", "Cron, UTC."),
        PrinterColumn("Keep", ".spec.keep", "integer", "Succeeded backups kept."),
        _phase("Active, Suspended or Invalid."),
        PrinterColumn("Last Backup", ".status.lastBackup", "string", "VMBackup created last."),
        PrinterColumn("Next Run", ".status.nextRunAt", "date", "Next due instant.", priority=1),
        AGE,
    ),
    selectable_fields=(".spec.vmName",),
)
MIGRATION = Kind(
    kind="Migration",
    plural="migrations",
    singular="migration",
    short_names=("kvmig",),
    model=migrations.Migration,
    spec_model=migrations.MigrationSpec,
    status_model=migrations.MigrationStatus,
    printer_columns=(
        PrinterColumn("VM", ".spec.vmName", "string", "VirtualMachine being migrated."),
        PrinterColumn("Source", ".status.sourceNode", "string", "Node the VM leaves."),
        PrinterColumn("Target", ".status.targetNode", "string", "Node the VM moves to."),
        _phase("Lifecycle phase."),
        PrinterColumn("Downtime", ".status.downtimeMs", "integer", "Guest pause in ms."),
        AGE,
    ),
    selectable_fields=(".spec.vmName",),
)
VRF = Kind(
    kind="VRF",
    plural="vrfs",
    singular="vrf",
    short_names=("kvvrf",),
    model=vrfs.VRF,
    spec_model=vrfs.VRFSpec,
    status_model=vrfs.VRFStatus,
    printer_columns=(
        PrinterColumn("Table", ".status.tableAllocated", "integer", "Routing table in use."),
        PrinterColumn("Ready Nodes", ".status.readyNodes", "string", "Ready/selected nodes."),
        _phase("Lifecycle phase."),
        AGE,
    ),
)
DESKTOPPOOL = Kind(
    kind="DesktopPool",
    plural="desktoppools",
    singular="desktoppool",
    short_names=("dpool",),
    model=desktoppools.DesktopPool,
    spec_model=desktoppools.DesktopPoolSpec,
    status_model=desktoppools.DesktopPoolStatus,
    printer_columns=(
        PrinterColumn("Ready", ".status.ready", "integer", "Usable desktops."),
        PrinterColumn("Claimed", ".status.claimed", "integer", "Desktops bound to a claim."),
        PrinterColumn("Spare", ".status.spare", "integer", "Ready unclaimed desktops."),
        PrinterColumn("Max", ".spec.max", "integer", "Upper bound.", priority=1),
        AGE,
    ),
)
DESKTOPCLAIM = Kind(
    kind="DesktopClaim",
    plural="desktopclaims",
    singular="desktopclaim",
    short_names=("dclaim",),
    model=desktopclaims.DesktopClaim,
    spec_model=desktopclaims.DesktopClaimSpec,
    status_model=desktopclaims.DesktopClaimStatus,
    printer_columns=(
        PrinterColumn("Pool", ".spec.poolRef.name", "string", "DesktopPool."),
        PrinterColumn("User", ".spec.user", "string", "User the desktop is for."),
        _phase("Lifecycle phase."),
        PrinterColumn("VM", ".status.vmName", "string", "Desktop VirtualMachine."),
        AGE,
    ),
    selectable_fields=(".spec.poolRef.name",),
)
REBALANCEPOLICY = Kind(
    kind="RebalancePolicy",
    plural="rebalancepolicies",
    singular="rebalancepolicy",
    short_names=("kvrb",),
    model=rebalancepolicies.RebalancePolicy,
    spec_model=rebalancepolicies.RebalancePolicySpec,
    status_model=rebalancepolicies.RebalancePolicyStatus,
    printer_columns=(
        PrinterColumn("Mode", ".spec.mode", "string", "Off, Balance or Consolidate."),
        _phase("Where the rebalancer stands."),
        PrinterColumn("Last Pass", ".status.lastPassAt", "date", "When the last pass ran."),
        PrinterColumn("Message", ".status.message", "string", "What it decided.", priority=1),
        AGE,
    ),
    scope="Cluster",
)

STORAGEBACKEND = Kind(
    kind="StorageBackend",
    plural="storagebackends",
    singular="storagebackend",
    short_names=("kvsb",),
    model=storagebackends.StorageBackend,
    spec_model=storagebackends.StorageBackendSpec,
    status_model=storagebackends.StorageBackendStatus,
    printer_columns=(
        PrinterColumn("Type", ".spec.type", "string", "local, shared, nfs or iscsi."),
        AGE,
    ),
    scope="Cluster",
)

KINDS: tuple[Kind, ...] = (
    VMTEMPLATE,
    VIRTUALMACHINE,
    VMBACKUP,
    VMBACKUPSCHEDULE,
    MIGRATION,
    VRF,
    DESKTOPPOOL,
    DESKTOPCLAIM,
    REBALANCEPOLICY,
    STORAGEBACKEND,
)


def by_kind(kind: str) -> Kind:
    """The registry entry for a kind name (``"VirtualMachine"``); KeyError if unknown."""
    for entry in KINDS:
        if entry.kind == kind:
            return entry
    raise KeyError(kind)


def by_plural(plural: str) -> Kind:
    """The registry entry for a plural resource name (``"virtualmachines"``)."""
    for entry in KINDS:
        if entry.plural == plural:
            return entry
    raise KeyError(plural)
