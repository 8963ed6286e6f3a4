"""The shape of a virtual machine, shared by VMTemplate.spec and VirtualMachine.spec.

``MachineSpec`` is the full shape (a template must say how much CPU and memory);
``MachineOverrides`` has the same fields, all optional: on a VirtualMachine each set
field replaces the template's value wholesale (a VM listing ``disks`` replaces the
template's disk list, it does not merge into it).
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from kubevisor.api import common, vmaccess

DiskBus = Literal["virtio", "sata", "scsi"]
DiskDevice = Literal["disk", "lun"]
CloneMode = Literal["linked", "full"]
StorageKind = Literal["local", "shared"]
NICModel = Literal["virtio", "e1000"]
Firmware = Literal["bios", "uefi"]

VLANId = Annotated[int, Field(ge=1, le=4094)]


class CPU(common.Model):
    """Virtual CPUs."""

    cores: Annotated[int, Field(ge=1, le=512)] = 1
    """Number of virtual CPUs."""
    model: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    """CPU model as libvirt names it (e.g. qemu64, host-model); unset means the driver's
    default, which migrates between any two nodes."""


_LUN_RULE = common.rule(
    "self.device != 'lun' || (self.bus == 'scsi' && has(self.backend))",
    "device lun passes SCSI commands to a LUN: it needs bus scsi and a backend "
    "(an iSCSI StorageBackend)",
    field_path=".device",
)


class Disk(common.Model):
    """A virtual disk, created on the node (or shared storage) when the VM is placed."""

    model_config = ConfigDict(json_schema_extra=common.cel(_LUN_RULE))

    name: common.DNSLabel
    """Disk name, unique within the machine; part of the disk file name."""
    image: common.PathString | None = None
    """Base image: an absolute path, or a name resolved in the node's image directory.
    Unset means an empty disk of the given size."""
    size: common.PositiveQuantity | None = None
    """Virtual size, e.g. 10Gi. Unset means the base image's size."""
    bus: DiskBus = "virtio"
    """Bus the guest sees the disk on; scsi: a virtio-scsi controller (the guest sees
    sda, sdb...; sata and scsi disks share the sd names)."""
    clone: CloneMode = "linked"
    """linked: a qcow2 overlay backed by the base image; full: an independent copy."""
    storage: StorageKind = "local"
    """local: the node's disk directory; shared: the shared storage every node mounts
    (live migration without block copy needs it)."""
    retain: bool = False
    """Keep the disk file when the VM is deleted."""
    device: DiskDevice = "disk"
    """disk: a disk QEMU emulates; lun: SCSI commands pass through to the backend's LUN
    (bus scsi, an iSCSI backend)."""
    backend: common.ObjectName | None = None
    """StorageBackend the disk lives on; when set it decides where (storage is not read).
    Only nodes reaching it run the VM."""

    @model_validator(mode="after")
    def _lun(self) -> Self:
        if self.device == "lun" and (self.bus != "scsi" or self.backend is None):
            raise ValueError(_LUN_RULE["message"])
        return self


class NIC(common.Model):
    """A network interface attached to a network segment."""

    name: common.DNSLabel
    """Interface name, unique within the machine."""
    network: Annotated[str, Field(min_length=1, max_length=63, pattern=common.DNS_LABEL_PATTERN)]
    """Segment (network) name; "default" is the node fabric."""
    vlan: VLANId | None = None
    """802.1Q VLAN id on the network, 1..4094; unset means untagged."""
    mac: common.MACAddress | None = None
    """Unicast MAC address (aa:bb:cc:dd:ee:ff); generated and kept stable when unset."""
    model: NICModel = "virtio"
    """Device model the guest sees."""


class Boot(common.Model):
    """How the machine boots: firmware and disks, or a kernel booted directly."""

    kernel: common.PathString | None = None
    """Path of a kernel on the node to boot directly (no bootloader)."""
    initrd: common.PathString | None = None
    """Path of an initramfs on the node, used with kernel."""
    cmdline: Annotated[str, Field(max_length=4096)] | None = None
    """Kernel command line, used with kernel."""
    firmware: Firmware = "bios"
    """bios (SeaBIOS) or uefi (OVMF)."""


class Display(common.Model):
    """Graphical console."""

    vnc: bool = True
    """Expose a VNC display (reached through the display gateway)."""
    password_secret_ref: common.SecretKeySelector | None = None
    """Secret key holding the VNC password."""


class Console(common.Model):
    """Text console."""

    serial: bool = True
    """Attach a serial console; its output is logged on the node."""


_DISKS_UNIQUE = common.rule(
    "self.all(d, self.exists_one(e, e.name == d.name))", "disk names must be unique"
)
_NICS_UNIQUE = common.rule(
    "self.all(n, self.exists_one(m, m.name == n.name))", "NIC names must be unique"
)
_MACS_UNIQUE = common.rule(
    "self.all(n, !has(n.mac) || self.exists_one(m, has(m.mac)"
    " && m.mac.lowerAscii() == n.mac.lowerAscii()))",
    "two NICs of one machine must not have the same MAC",
)


def _unique_names(items: list[Disk] | list[NIC] | None, what: str) -> None:
    names = [item.name for item in items or []]
    if len(set(names)) != len(names):
        raise ValueError(f"{what} names must be unique")


def _unique_macs(nics: list[NIC] | None) -> None:
    macs = [nic.mac.lower() for nic in nics or [] if nic.mac is not None]
    if len(set(macs)) != len(macs):
        raise ValueError("two NICs of one machine must not have the same MAC")


class MachineOverrides(common.Model):
    """Every machine field, optional. Set fields replace the template's values."""

    cpu: CPU | None = None
    """Virtual CPUs."""
    memory: common.PositiveQuantity | None = None
    """Guest memory, a Kubernetes quantity, e.g. 256Mi."""
    disks: list[Disk] | None = Field(
        None, max_length=16, json_schema_extra=common.cel(_DISKS_UNIQUE)
    )
    """Disks, the first one boots (unless boot.kernel is set)."""
    nics: list[NIC] | None = Field(
        None, max_length=16, json_schema_extra=common.cel(_NICS_UNIQUE, _MACS_UNIQUE)
    )
    """Network interfaces."""
    boot: Boot | None = None
    """Boot settings."""
    display: Display | None = None
    """Graphical console."""
    console: Console | None = None
    """Serial console."""
    gpus: Annotated[int, Field(ge=0, le=16)] | None = None
    """Number of GPUs to pass through; only nodes reporting that many are eligible."""
    node_selector: common.NodeSelector | None = None
    """Node labels the machine's node must have: label keys ([prefix/]name) to values."""
    access: vmaccess.Access | None = None
    """Remote access: the Secret whose ssh public keys the guest authorizes
    (docs/remote-access.md)."""

    @model_validator(mode="after")
    def _unique(self) -> Self:
        _unique_names(self.disks, "disk")
        _unique_names(self.nics, "NIC")
        _unique_macs(self.nics)
        return self


class MachineSpec(MachineOverrides):
    """The full machine shape of a VMTemplate: cpu and memory are required."""

    cpu: CPU
    """Virtual CPUs."""
    memory: common.PositiveQuantity
    """Guest memory, a Kubernetes quantity, e.g. 256Mi."""
    disks: list[Disk] = Field(
        default_factory=list, max_length=16, json_schema_extra=common.cel(_DISKS_UNIQUE)
    )
    """Disks, the first one boots (unless boot.kernel is set)."""
    nics: list[NIC] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra=common.cel(_NICS_UNIQUE, _MACS_UNIQUE),
    )
    """Network interfaces."""
    boot: Boot = Field(default_factory=Boot)
    """Boot settings."""
    display: Display = Field(default_factory=Display)
    """Graphical console."""
    console: Console = Field(default_factory=Console)
    """Serial console."""
    gpus: Annotated[int, Field(ge=0, le=16)] = 0
    """Number of GPUs to pass through; only nodes reporting that many are eligible."""
    node_selector: common.NodeSelector = Field(default_factory=dict)
    """Node labels the machine's node must have."""


def effective(template: MachineSpec | None, overrides: MachineOverrides) -> MachineSpec:
    """The machine a VirtualMachine asks for: template values, replaced field by field by
    the fields the VM sets. Raises ``pydantic.ValidationError`` when neither supplies a
    required field (cpu falls back to one core)."""
    base = template.model_dump(exclude_unset=True) if template is not None else {}
    base.setdefault("cpu", {})
    base.update(overrides.model_dump(exclude_unset=True, exclude_none=True))
    return MachineSpec.model_validate(base)
