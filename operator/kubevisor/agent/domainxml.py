"""Domain XML as a conversion: (resolved machine, VM identity, node-side placement, host
facts) -> libvirt domain XML.

Why a pure function: the XML is the one place where "what the user asked for" becomes
"what QEMU runs", so it must be testable against expected trees without libvirt, and two
agents given the same inputs must produce the same domain (adoption compares it). Each
part of the domain is built by a small configurator (cpu, memory, disks, nics, display,
console, metadata); :func:`render` only strings them together.

Everything node-specific (paths of disk files, the bridge a NIC joins, the tap name, the
address VNC listens on) is decided before, by the agent, and passed in as plain data.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from kubevisor.api import machines, naming, quantities

#: XML namespace of our <metadata> element; the URI is an identifier, never fetched.
METADATA_NS = "https://kubevisor.io/xmlns/domain/v1"
METADATA_PREFIX = "kubevisor"
#: Host addresses VNC may bind to without a password (never a wildcard).
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})


class DomainXMLError(ValueError):
    """The inputs cannot make a safe or valid domain; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """Which VirtualMachine a domain belongs to (stored in the domain's metadata)."""

    namespace: str
    name: str
    uid: str

    @property
    def domain_name(self) -> str:
        """``<namespace>_<name>`` (see ``api/naming``)."""
        return naming.domain_name(self.namespace, self.name)


@dataclasses.dataclass(frozen=True)
class HostFacts:
    """Facts about the node gathered once by the agent, passed in (never probed here)."""

    display_address: str = "127.0.0.1"
    """Address VNC listens on: the node's address, or loopback."""
    machine_type: str | None = None
    """QEMU machine type (e.g. pc); None lets libvirt pick its default."""
    emulator: str | None = None
    """Path of the QEMU binary; None lets libvirt pick."""
    arch: str = "x86_64"


@dataclasses.dataclass(frozen=True)
class NetworkSource:
    """A disk QEMU opens over the network with its own client (libnfs, libiscsi)."""

    protocol: Literal["nfs", "iscsi"]
    host: str
    name: str
    """nfs: the file's path on the server (export + path); iscsi: ``<target IQN>/<LUN>``."""
    port: int | None = None
    username: str | None = None
    """iscsi: the CHAP user; its password is the libvirt secret ``secret_usage``."""
    secret_usage: str | None = None


@dataclasses.dataclass(frozen=True)
class DiskPlacement:
    """A disk of the machine as the node realises it: a file at ``path``, or, when
    ``network`` is set, that network source (``path`` then only names it in logs)."""

    name: str
    path: Path
    bus: machines.DiskBus = "virtio"
    format: str = "qcow2"
    device: Literal["disk", "lun"] = "disk"
    """lun: SCSI commands pass through to the LUN (bus scsi, an iSCSI source)."""
    network: NetworkSource | None = None


@dataclasses.dataclass(frozen=True)
class NICPlacement:
    """A NIC as the node realises it: a tap named ``tap`` on ``bridge``."""

    name: str
    mac: str
    bridge: str
    tap: str
    model: machines.NICModel = "virtio"


@dataclasses.dataclass(frozen=True)
class Placement:
    """Node-side decisions the XML needs, made by the agent before rendering."""

    disks: tuple[DiskPlacement, ...] = ()
    nics: tuple[NICPlacement, ...] = ()
    console_log: Path | None = None
    """File the serial console is logged to (None: no serial console)."""
    vnc_password: str | None = None
    """VNC password read from the machine's Secret, if any."""


# ---------------------------------------------------------------------------------------
# Configurators: each returns elements to append to <domain>.


def configure_metadata(identity: Identity) -> ET.Element:
    """<metadata><kubevisor:vm uid= namespace= name=/></metadata>: how adoption finds us."""
    metadata = ET.Element("metadata")
    ET.SubElement(
        metadata,
        f"{{{METADATA_NS}}}vm",
        {"uid": identity.uid, "namespace": identity.namespace, "name": identity.name},
    )
    return metadata


def configure_memory(machine: machines.MachineSpec) -> list[ET.Element]:
    """<memory> and <currentMemory> in KiB (rounded up; QEMU wants whole KiB)."""
    kib = -(-quantities.to_bytes(machine.memory) // 1024)
    elements = []
    for tag in ("memory", "currentMemory"):
        element = ET.Element(tag, {"unit": "KiB"})
        element.text = str(kib)
        elements.append(element)
    return elements


def configure_cpu(machine: machines.MachineSpec) -> list[ET.Element]:
    """<vcpu> and, when a model is named, <cpu mode='custom'><model>."""
    vcpu = ET.Element("vcpu", {"placement": "static"})
    vcpu.text = str(machine.cpu.cores)
    elements = [vcpu]
    if machine.cpu.model is not None:
        if machine.cpu.model in {"host-model", "host-passthrough"}:
            cpu = ET.Element("cpu", {"mode": machine.cpu.model})
        else:
            cpu = ET.Element("cpu", {"mode": "custom", "match": "exact"})
            model = ET.SubElement(cpu, "model", {"fallback": "forbid"})
            model.text = machine.cpu.model
        elements.append(cpu)
    return elements


def configure_os(machine: machines.MachineSpec, facts: HostFacts) -> ET.Element:
    """<os>: firmware, and kernel/initrd/cmdline for direct boot when boot.kernel is set."""
    attrs = {"firmware": "efi"} if machine.boot.firmware == "uefi" else {}
    os_el = ET.Element("os", attrs)
    type_attrs = {"arch": facts.arch}
    if facts.machine_type:
        type_attrs["machine"] = facts.machine_type
    type_el = ET.SubElement(os_el, "type", type_attrs)
    type_el.text = "hvm"
    boot = machine.boot
    if boot.kernel:
        ET.SubElement(os_el, "kernel").text = boot.kernel
        if boot.initrd:
            ET.SubElement(os_el, "initrd").text = boot.initrd
        if boot.cmdline:
            ET.SubElement(os_el, "cmdline").text = boot.cmdline
    else:
        ET.SubElement(os_el, "boot", {"dev": "hd"})
    return os_el


_BUS_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd"}


def target_dev(bus: str, index: int) -> str:
    """The guest device name of the ``index``-th disk named with ``bus``'s prefix (vda,
    vdb, ... sda) (pure)."""
    letters = ""
    n = index
    while True:
        letters = chr(ord("a") + n % 26) + letters
        n = n // 26 - 1
        if n < 0:
            break
    return _BUS_PREFIX[bus] + letters


def target_devs(buses: Sequence[str]) -> list[str]:
    """Target device names of disks on ``buses``, in order (pure): numbered per name
    prefix, so sata and scsi disks (both sd*) never get the same name."""
    per_prefix: dict[str, int] = {}
    out = []
    for bus in buses:
        index = per_prefix.get(_BUS_PREFIX[bus], 0)
        per_prefix[_BUS_PREFIX[bus]] = index + 1
        out.append(target_dev(bus, index))
    return out


def _disk_source(disk: DiskPlacement, element: ET.Element) -> None:
    """<source file=> or <source protocol= name=><host/>[<auth>] (QEMU's own client)."""
    net = disk.network
    if net is None:
        ET.SubElement(element, "source", {"file": str(disk.path)})
        return
    source = ET.SubElement(element, "source", {"protocol": net.protocol, "name": net.name})
    host = {"name": net.host}
    if net.port is not None:
        host["port"] = str(net.port)
    if net.protocol == "nfs":
        host["transport"] = "tcp"
    ET.SubElement(source, "host", host)
    if net.protocol == "nfs":
        # libnfs speaks as uid/gid 0 (the export squashes or maps it, as it decides).
        ET.SubElement(source, "identity", {"user": "root", "group": "root"})
    if net.username is not None and net.secret_usage is not None:
        auth = ET.SubElement(source, "auth", {"username": net.username})
        ET.SubElement(auth, "secret", {"type": net.protocol, "usage": net.secret_usage})


def configure_disks(placement: Placement) -> list[ET.Element]:
    """One <disk> per placed disk (a file, or a network source); targets vda, vdb...
    sda... in order (:func:`target_devs`); a virtio-scsi controller when a disk is on
    bus scsi (without it libvirt would add an emulated LSI one the guest lacks a
    driver for)."""
    elements = []
    devs = target_devs([disk.bus for disk in placement.disks])
    for disk, dev in zip(placement.disks, devs, strict=True):
        kind = "file" if disk.network is None else "network"
        element = ET.Element("disk", {"type": kind, "device": disk.device})
        ET.SubElement(element, "driver", {"name": "qemu", "type": disk.format, "cache": "none"})
        _disk_source(disk, element)
        ET.SubElement(element, "target", {"dev": dev, "bus": disk.bus})
        ET.SubElement(element, "alias", {"name": f"ua-disk-{disk.name}"})
        elements.append(element)
    if any(disk.bus == "scsi" for disk in placement.disks):
        elements.append(
            ET.Element("controller", {"type": "scsi", "index": "0", "model": "virtio-scsi"})
        )
    return elements


def configure_nics(placement: Placement) -> list[ET.Element]:
    """One <interface type='bridge'> per NIC: libvirt creates the named tap on the bridge
    and removes it with the domain, so a crashed agent never leaks taps of dead guests."""
    elements = []
    for nic in placement.nics:
        element = ET.Element("interface", {"type": "bridge"})
        ET.SubElement(element, "mac", {"address": nic.mac.lower()})
        ET.SubElement(element, "source", {"bridge": nic.bridge})
        ET.SubElement(element, "target", {"dev": nic.tap, "managed": "yes"})
        ET.SubElement(element, "model", {"type": nic.model})
        ET.SubElement(element, "alias", {"name": f"ua-nic-{nic.name}"})
        elements.append(element)
    return elements


def configure_display(
    machine: machines.MachineSpec, placement: Placement, facts: HostFacts
) -> list[ET.Element]:
    """<graphics type='vnc' autoport> on the node's address; refuses a wildcard address
    without a password (a display reachable from anywhere must not be open)."""
    if not machine.display.vnc:
        return []
    address = facts.display_address
    if address in WILDCARD_ADDRESSES and not placement.vnc_password:
        raise DomainXMLError(
            f"VNC would listen on {address!r} without a password; set the node address "
            "(--address) or display.passwordSecretRef"
        )
    attrs = {"type": "vnc", "port": "-1", "autoport": "yes", "listen": address}
    if placement.vnc_password:
        attrs["passwd"] = placement.vnc_password
    graphics = ET.Element("graphics", attrs)
    ET.SubElement(graphics, "listen", {"type": "address", "address": address})
    video = ET.Element("video")
    ET.SubElement(video, "model", {"type": "vga", "vram": "16384", "heads": "1"})
    return [graphics, video]


def configure_console(placement: Placement) -> list[ET.Element]:
    """Serial port 0 as a pty whose output is also appended to the console log file."""
    if placement.console_log is None:
        return []
    serial = ET.Element("serial", {"type": "pty"})
    ET.SubElement(serial, "log", {"file": str(placement.console_log), "append": "on"})
    ET.SubElement(serial, "target", {"port": "0"})
    console = ET.Element("console", {"type": "pty"})
    ET.SubElement(console, "target", {"type": "serial", "port": "0"})
    return [serial, console]


# ---------------------------------------------------------------------------------------
# The conversion.


def build(
    machine: machines.MachineSpec,
    identity: Identity,
    placement: Placement,
    facts: HostFacts,
    *,
    domain_uuid: str | None = None,
) -> ET.Element:
    """The <domain> tree (type='qemu': TCG, works where KVM cannot run guests).

    ``domain_uuid`` is given when redefining an existing domain (libvirt refuses a
    second definition of a name under a new UUID)."""
    if len(placement.disks) != len(machine.disks):
        raise DomainXMLError(
            f"{len(machine.disks)} disks in the machine, {len(placement.disks)} placed"
        )
    if len(placement.nics) != len(machine.nics):
        raise DomainXMLError(
            f"{len(machine.nics)} NICs in the machine, {len(placement.nics)} placed"
        )
    domain = ET.Element("domain", {"type": "qemu"})
    ET.SubElement(domain, "name").text = identity.domain_name
    if domain_uuid:
        ET.SubElement(domain, "uuid").text = domain_uuid
    domain.append(configure_metadata(identity))
    domain.extend(configure_memory(machine))
    domain.extend(configure_cpu(machine))
    domain.append(configure_os(machine, facts))
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(domain, "clock", {"offset": "utc"})
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"
    devices = ET.SubElement(domain, "devices")
    if facts.emulator:
        ET.SubElement(devices, "emulator").text = facts.emulator
    devices.extend(configure_disks(placement))
    devices.extend(configure_nics(placement))
    devices.extend(configure_display(machine, placement, facts))
    devices.extend(configure_console(placement))
    ET.SubElement(devices, "memballoon", {"model": "none"})
    return domain


def render(
    machine: machines.MachineSpec,
    identity: Identity,
    placement: Placement,
    facts: HostFacts,
    *,
    domain_uuid: str | None = None,
) -> str:
    """:func:`build` serialised; deterministic for equal inputs."""
    ET.register_namespace(METADATA_PREFIX, METADATA_NS)
    tree = build(machine, identity, placement, facts, domain_uuid=domain_uuid)
    ET.indent(tree)
    return ET.tostring(tree, encoding="unicode")


def identity_from_xml(xml: str) -> Identity | None:
    """The VM identity stored in a domain's metadata, or None for foreign domains."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    found = root.find(f"metadata/{{{METADATA_NS}}}vm")
    if found is None:
        return None
    uid, namespace, name = found.get("uid"), found.get("namespace"), found.get("name")
    if not (uid and namespace and name):
        return None
    return Identity(namespace=namespace, name=name, uid=uid)


@dataclasses.dataclass(frozen=True)
class LiveFacts:
    """What a running domain's live XML says that status reports."""

    macs: dict[str, str]
    """NIC name -> MAC (from the ua-nic-<name> alias)."""
    taps: dict[str, str]
    vnc_port: int | None
    vnc_host: str | None


def live_facts(xml: str) -> LiveFacts:
    """MACs, taps and the VNC port libvirt allocated, read from the live domain XML."""
    root = ET.fromstring(xml)
    macs: dict[str, str] = {}
    taps: dict[str, str] = {}
    for iface in root.findall("devices/interface"):
        alias = iface.find("alias")
        name = (alias.get("name") or "") if alias is not None else ""
        if not name.startswith("ua-nic-"):
            continue
        nic = name.removeprefix("ua-nic-")
        mac = iface.find("mac")
        if mac is not None and mac.get("address"):
            macs[nic] = str(mac.get("address"))
        target = iface.find("target")
        if target is not None and target.get("dev"):
            taps[nic] = str(target.get("dev"))
    port: int | None = None
    host: str | None = None
    graphics = root.find("devices/graphics[@type='vnc']")
    if graphics is not None:
        raw = graphics.get("port", "-1")
        port = int(raw) if raw.lstrip("-").isdigit() and int(raw) > 0 else None
        host = graphics.get("listen")
    return LiveFacts(macs=macs, taps=taps, vnc_port=port, vnc_host=host)


def for_destination(
    xml: str, *, display_address: str | None, disk_paths: Mapping[str, str] | None = None
) -> str:
    """The source's migratable domain XML as the destination runs it (pure): the VNC
    display listens on the target node's address (the source's address does not exist
    there, and QEMU would refuse to start), and a disk whose source file is a key of
    ``disk_paths`` (node-local, copied by block copy) opens the destination's file
    instead. Shared disks keep their path: it is the same on every node."""
    ET.register_namespace(METADATA_PREFIX, METADATA_NS)
    root = ET.fromstring(xml)
    if display_address is not None:
        for graphics in root.iter("graphics"):
            if graphics.get("listen") is not None:
                graphics.set("listen", display_address)
            for listen in graphics.iter("listen"):
                if listen.get("type") == "address":
                    listen.set("address", display_address)
    for disk in root.iter("disk"):
        source = disk.find("source")
        moved = (disk_paths or {}).get(source.get("file", "")) if source is not None else None
        if source is not None and moved is not None:
            source.set("file", moved)
    return ET.tostring(root, encoding="unicode")
