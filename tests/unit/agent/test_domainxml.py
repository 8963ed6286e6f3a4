"""Domain XML against expected trees: each configurator, and the whole conversion."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kubevisor.agent import domainxml
from kubevisor.api import machines

pytestmark = pytest.mark.unit

IDENTITY = domainxml.Identity(namespace="ns1", name="tiny-1", uid="0f0e-uid")
FACTS = domainxml.HostFacts(display_address="10.77.0.11")


def _machine(**overrides: object) -> machines.MachineSpec:
    data: dict[str, object] = {
        "cpu": {"cores": 2},
        "memory": "256Mi",
        "disks": [{"name": "root", "image": "tiny"}],
        "nics": [{"name": "eth0", "network": "default", "mac": "52:54:00:AA:BB:01"}],
        "boot": {"kernel": "/img/vmlinuz", "initrd": "/img/initrd.img", "cmdline": "console=ttyS0"},
    }
    data.update(overrides)
    return machines.MachineSpec.model_validate(data)


def _placement(**overrides: object) -> domainxml.Placement:
    values: dict[str, object] = {
        "disks": (domainxml.DiskPlacement(name="root", path=Path("/d/ns1_tiny-1-root.qcow2")),),
        "nics": (
            domainxml.NICPlacement(
                name="eth0", mac="52:54:00:AA:BB:01", bridge="kvbr0", tap="kvdeadbeefn0"
            ),
        ),
        "console_log": Path("/logs/ns1_tiny-1.log"),
    }
    values.update(overrides)
    return domainxml.Placement(**values)  # type: ignore[arg-type]


def _tree(machine: machines.MachineSpec | None = None, **placement: object) -> ET.Element:
    xml = domainxml.render(machine or _machine(), IDENTITY, _placement(**placement), FACTS)
    return ET.fromstring(xml)


def test_domain_is_tcg_named_namespace_underscore_name() -> None:
    root = _tree()
    assert root.tag == "domain"
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "ns1_tiny-1"


def test_metadata_holds_identity_and_round_trips() -> None:
    xml = domainxml.render(_machine(), IDENTITY, _placement(), FACTS)
    root = ET.fromstring(xml)
    vm = root.find(f"metadata/{{{domainxml.METADATA_NS}}}vm")
    assert vm is not None
    assert (vm.get("uid"), vm.get("namespace"), vm.get("name")) == ("0f0e-uid", "ns1", "tiny-1")
    assert domainxml.identity_from_xml(xml) == IDENTITY


def test_identity_of_foreign_domain_is_none() -> None:
    assert domainxml.identity_from_xml("<domain><name>x</name></domain>") is None
    assert domainxml.identity_from_xml("not xml") is None


@pytest.mark.parametrize(
    ("memory", "kib"), [("256Mi", 262144), ("1Gi", 1048576), ("1000", 1), ("1M", 977)]
)
def test_memory_in_kib_rounded_up(memory: str, kib: int) -> None:
    root = _tree(_machine(memory=memory))
    assert root.findtext("memory") == str(kib)
    assert root.findtext("currentMemory") == str(kib)
    assert root.find("memory").get("unit") == "KiB"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [
        ({"cores": 2}, None),
        ({"cores": 1, "model": "qemu64"}, ("custom", "qemu64")),
        ({"cores": 1, "model": "host-model"}, ("host-model", None)),
    ],
)
def test_cpu(cpu: dict[str, object], expected: tuple[str, str | None] | None) -> None:
    root = _tree(_machine(cpu=cpu))
    assert root.findtext("vcpu") == str(cpu["cores"])
    element = root.find("cpu")
    if expected is None:
        assert element is None
    else:
        assert element is not None
        assert element.get("mode") == expected[0]
        assert element.findtext("model") == expected[1]


def test_direct_kernel_boot() -> None:
    os_el = _tree().find("os")
    assert os_el is not None
    assert os_el.findtext("type") == "hvm"
    assert os_el.findtext("kernel") == "/img/vmlinuz"
    assert os_el.findtext("initrd") == "/img/initrd.img"
    assert os_el.findtext("cmdline") == "console=ttyS0"
    assert os_el.find("boot") is None


def test_disk_boot_and_uefi_without_kernel() -> None:
    os_el = _tree(_machine(boot={"firmware": "uefi"})).find("os")
    assert os_el is not None
    assert os_el.get("firmware") == "efi"
    assert os_el.find("kernel") is None
    assert os_el.find("boot").get("dev") == "hd"  # type: ignore[union-attr]


def test_disks_targets_per_bus() -> None:
    machine = _machine(
        disks=[{"name": "a"}, {"name": "b", "bus": "sata"}, {"name": "c"}],
    )
    placed = tuple(
        domainxml.DiskPlacement(name=d.name, path=Path(f"/d/{d.name}.qcow2"), bus=d.bus)
        for d in machine.disks
    )
    disks = _tree(machine, disks=placed).findall("devices/disk")
    got = [
        (
            d.find("source").get("file"),  # type: ignore[union-attr]
            d.find("target").get("dev"),  # type: ignore[union-attr]
            d.find("target").get("bus"),  # type: ignore[union-attr]
            d.find("driver").get("type"),  # type: ignore[union-attr]
        )
        for d in disks
    ]
    assert got == [
        ("/d/a.qcow2", "vda", "virtio", "qcow2"),
        ("/d/b.qcow2", "sda", "sata", "qcow2"),
        ("/d/c.qcow2", "vdb", "virtio", "qcow2"),
    ]


@pytest.mark.parametrize(
    ("buses", "devs"),
    [
        (["virtio"], ["vda"]),
        (["scsi", "scsi"], ["sda", "sdb"]),
        (["sata", "scsi", "virtio", "scsi"], ["sda", "sdb", "vda", "sdc"]),
        (["virtio"] * 27, [f"vd{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + ["vdaa"]),
    ],
)
def test_target_devs_numbered_per_name_prefix(buses: list[str], devs: list[str]) -> None:
    assert domainxml.target_devs(buses) == devs


def _disk_xml(placed: domainxml.DiskPlacement) -> ET.Element:
    machine = _machine(disks=[{"name": placed.name, "bus": placed.bus}])
    return _tree(machine, disks=(placed,))


ISCSI = domainxml.NetworkSource(
    protocol="iscsi", host="10.9.0.2", port=3260, name="iqn.2026-12.io.kv:t1/1",
    username="kv", secret_usage="kubevisor-iscsi-t1",
)  # fmt: skip
NFS = domainxml.NetworkSource(protocol="nfs", host="10.9.0.3", name="/export/ns/vm/root.qcow2")


@pytest.mark.parametrize(
    ("placed", "disk_xml", "controllers"),
    [
        (
            domainxml.DiskPlacement(name="r", path=Path("/d/r.qcow2"), bus="scsi"),
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
            "<source file='/d/r.qcow2'/><target dev='sda' bus='scsi'/>"
            "<alias name='ua-disk-r'/></disk>",
            ["virtio-scsi"],
        ),
        (
            domainxml.DiskPlacement(name="r", path=Path("/d/r.qcow2")),
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
            "<source file='/d/r.qcow2'/><target dev='vda' bus='virtio'/>"
            "<alias name='ua-disk-r'/></disk>",
            [],
        ),
        (
            domainxml.DiskPlacement(
                name="r", path=Path("lun"), bus="scsi", format="raw", device="lun", network=ISCSI
            ),
            "<disk type='network' device='lun'><driver name='qemu' type='raw' cache='none'/>"
            "<source protocol='iscsi' name='iqn.2026-12.io.kv:t1/1'>"
            "<host name='10.9.0.2' port='3260'/><auth username='kv'>"
            "<secret type='iscsi' usage='kubevisor-iscsi-t1'/></auth></source>"
            "<target dev='sda' bus='scsi'/><alias name='ua-disk-r'/></disk>",
            ["virtio-scsi"],
        ),
        (
            domainxml.DiskPlacement(name="r", path=Path("nfs"), network=NFS),
            "<disk type='network' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
            "<source protocol='nfs' name='/export/ns/vm/root.qcow2'>"
            "<host name='10.9.0.3' transport='tcp'/><identity user='root' group='root'/>"
            "</source><target dev='vda' bus='virtio'/><alias name='ua-disk-r'/></disk>",
            [],
        ),
    ],
    ids=["scsi-file", "virtio-file", "scsi-lun-iscsi-chap", "nfs"],
)
def test_disk_sources_and_scsi_controller(
    placed: domainxml.DiskPlacement, disk_xml: str, controllers: list[str]
) -> None:
    root = _disk_xml(placed)
    (disk,) = root.findall("devices/disk")
    got_xml = ET.canonicalize(ET.tostring(disk, encoding="unicode"), strip_text=True)
    assert got_xml == ET.canonicalize(disk_xml, strip_text=True)
    got = [c.get("model") for c in root.findall("devices/controller[@type='scsi']")]
    assert got == controllers


def test_nic_is_named_tap_on_bridge_with_stable_mac() -> None:
    (iface,) = _tree().findall("devices/interface")
    assert iface.get("type") == "bridge"
    assert iface.find("mac").get("address") == "52:54:00:aa:bb:01"  # type: ignore[union-attr]
    assert iface.find("source").get("bridge") == "kvbr0"  # type: ignore[union-attr]
    assert iface.find("target").get("dev") == "kvdeadbeefn0"  # type: ignore[union-attr]
    assert iface.find("model").get("type") == "virtio"  # type: ignore[union-attr]
    assert iface.find("alias").get("name") == "ua-nic-eth0"  # type: ignore[union-attr]


def test_vnc_listens_on_node_address_with_autoport() -> None:
    graphics = _tree().find("devices/graphics")
    assert graphics is not None
    assert graphics.get("type") == "vnc"
    assert graphics.get("autoport") == "yes"
    assert graphics.get("listen") == "10.77.0.11"
    assert graphics.get("passwd") is None


def test_vnc_wildcard_without_password_is_refused() -> None:
    facts = domainxml.HostFacts(display_address="0.0.0.0")
    with pytest.raises(domainxml.DomainXMLError, match="without a password"):
        domainxml.render(_machine(), IDENTITY, _placement(), facts)
    xml = domainxml.render(_machine(), IDENTITY, _placement(vnc_password="s3cret"), facts)
    assert ET.fromstring(xml).find("devices/graphics").get("passwd") == "s3cret"  # type: ignore[union-attr]


def test_no_display_when_vnc_off() -> None:
    assert _tree(_machine(display={"vnc": False})).find("devices/graphics") is None


def test_serial_console_logged_to_file() -> None:
    root = _tree()
    serial = root.find("devices/serial")
    assert serial is not None
    assert serial.find("log").get("file") == "/logs/ns1_tiny-1.log"  # type: ignore[union-attr]
    assert root.find("devices/console/target").get("type") == "serial"  # type: ignore[union-attr]
    assert _tree(console_log=None).find("devices/serial") is None


def test_placement_must_match_machine() -> None:
    with pytest.raises(domainxml.DomainXMLError):
        domainxml.render(_machine(), IDENTITY, _placement(disks=()), FACTS)


def _render_in_fresh_process(hash_seed: str) -> str:
    """This module's render, in a new interpreter with its own string-hash seed."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('t', {__file__!r})\n"
        "t = importlib.util.module_from_spec(spec); spec.loader.exec_module(t)\n"
        "sys.stdout.write(t.domainxml.render(t._machine(), t.IDENTITY, t._placement(), t.FACTS))"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout


def test_render_is_deterministic_across_processes() -> None:
    """The agent compares XML it rendered before a restart with XML it renders now: equal
    input must give equal output in any process (no set order, no per-process hash)."""
    here = domainxml.render(_machine(), IDENTITY, _placement(), FACTS)
    assert _render_in_fresh_process("1") == here
    assert _render_in_fresh_process("2") == here


def test_live_facts_from_xml() -> None:
    xml = domainxml.render(_machine(), IDENTITY, _placement(), FACTS)
    xml = xml.replace('port="-1"', 'port="5901"')
    facts = domainxml.live_facts(xml)
    assert facts.macs == {"eth0": "52:54:00:aa:bb:01"}
    assert facts.taps == {"eth0": "kvdeadbeefn0"}
    assert (facts.vnc_host, facts.vnc_port) == ("10.77.0.11", 5901)


@pytest.mark.parametrize(
    ("disk_paths", "expected"),
    [
        (None, ["/d/ns1_tiny-1-root.qcow2", "/nas/shared.qcow2"]),
        ({}, ["/d/ns1_tiny-1-root.qcow2", "/nas/shared.qcow2"]),
        (
            {"/d/ns1_tiny-1-root.qcow2": "/node-2/d/root.qcow2"},
            ["/node-2/d/root.qcow2", "/nas/shared.qcow2"],
        ),
        ({"/elsewhere.qcow2": "/x.qcow2"}, ["/d/ns1_tiny-1-root.qcow2", "/nas/shared.qcow2"]),
    ],
    ids=["no map", "empty map", "local disk moves", "unrelated path"],
)
def test_for_destination_rewrites_block_copied_disks_and_the_display(
    disk_paths: dict[str, str] | None, expected: list[str]
) -> None:
    machine = _machine(
        disks=[{"name": "root", "image": "tiny"}, {"name": "nas", "size": "1Gi"}],
        display={"vnc": True},
    )
    placed = (
        domainxml.DiskPlacement(name="root", path=Path("/d/ns1_tiny-1-root.qcow2")),
        domainxml.DiskPlacement(name="nas", path=Path("/nas/shared.qcow2")),
    )
    xml = domainxml.render(machine, IDENTITY, _placement(disks=placed), FACTS)
    out = ET.fromstring(
        domainxml.for_destination(xml, display_address="10.77.0.12", disk_paths=disk_paths)
    )
    files = [d.find("source").get("file") for d in out.iter("disk")]  # type: ignore[union-attr]
    assert files == expected
    assert [g.get("listen") for g in out.iter("graphics")] == ["10.77.0.12"]


def test_scsi_lun_and_nfs_disks_validate_against_libvirts_schema(tmp_path: Path) -> None:
    """libvirt's own RelaxNG schema (virt-xml-validate) accepts the network disks, the
    LUN pass-through and the virtio-scsi controller as rendered."""
    if not (shutil.which("virt-xml-validate") and shutil.which("xmllint")):
        pytest.skip("virt-xml-validate/xmllint missing (libvirt-clients, libxml2-utils)")
    machine = _machine(
        disks=[{"name": "lun", "bus": "scsi", "device": "lun", "backend": "san"}, {"name": "nas"}]
    )
    placed = (
        domainxml.DiskPlacement(
            name="lun", path=Path("lun"), bus="scsi", format="raw", device="lun", network=ISCSI
        ),
        domainxml.DiskPlacement(name="nas", path=Path("nas"), network=NFS),
    )
    xml = domainxml.render(machine, IDENTITY, _placement(disks=placed), FACTS)
    (tmp_path / "domain.xml").write_text(xml)
    proc = subprocess.run(
        ["virt-xml-validate", str(tmp_path / "domain.xml"), "domain"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
