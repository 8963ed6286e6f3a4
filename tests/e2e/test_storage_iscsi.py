"""VM disks on an iSCSI StorageBackend, end to end (issue 15): a real iSCSI target (tgt,
user space, in its own network namespace on the fabric: devenv/san.py) behind CHAP, one
simulated nodes, the controller and the agents.

- A VM whose disk is the backend's LUN (``bus: scsi``, ``device: lun``) boots; QEMU's own
  iSCSI client logs in with the CHAP user and password from the backend's Secret (the
  password reaches QEMU as a libvirt secret, never in the domain XML), and the guest's
  kernel sees the LUN as /dev/sda — tgt's own disk (model VIRTUAL-DISK), 64 MiB, SCSI
  commands passed through.
- The same LUN with a wrong password: Ready=False StorageFailed with the client's words,
  and the LUN's bytes are untouched.
- Deleting the VM never deletes the LUN.
- A guest boots its whole system from a LUN: SeaBIOS reads the boot sector through the
  passed-through LUN, SYSLINUX loads the kernel and initramfs from it; no kernel is
  given on the host. It then live-migrates to the other node without block copy (both
  nodes log in to the same LUN) and goes on ticking there, never booting again.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.api import naming
from kubevisor.api import nodes as nodecontract
from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import guest, testing
from kubevisor.devenv import san as devsan

pytestmark = pytest.mark.e2e

CLUSTER = "kviscsi"
USER, PASSWORD = "kubevisor", "lun-secret-1"
LUN_BYTES = 64 * 2**20


@pytest.fixture(scope="module")
def dev() -> Iterator[tuple[devcluster.DevCluster, devsan.SAN]]:
    tools = ("libvirtd", "qemu-img", "tgtd", "tgtadm", "nsenter", "mkfs.vfat", "mcopy", "syslinux")
    with testing.dev_cluster(CLUSTER, nodes_count=2, stop_timeout=5.0, tools=tools) as dev:
        target = None
        try:
            target = devsan.start(
                CLUSTER, dev.base_dir / CLUSTER / "san", lun_bytes=LUN_BYTES, chap=(USER, PASSWORD)
            )
            for name, password in (("san-1", PASSWORD), ("san-wrong", "not-the-password")):
                dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([
                    {"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": nodecontract.LEASE_NAMESPACE}},
                    {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {"name": f"{name}-chap",
                                     "namespace": nodecontract.LEASE_NAMESPACE},
                        "data": {k: base64.b64encode(v.encode()).decode()
                                 for k, v in (("username", USER), ("password", password))},
                    },
                    {
                        "apiVersion": "kubevisor.io/v1alpha1",
                        "kind": "StorageBackend",
                        "metadata": {"name": name},
                        "spec": {"type": "iscsi", "iscsi": {
                            "portal": target.address, "iqn": target.iqn, "lun": 1,
                            "chapSecretRef": {"name": f"{name}-chap"}}},
                    },
                ]))  # fmt: skip
            yield dev, target
        finally:
            dev.run_kubectl("delete", "virtualmachines", "--all", "--wait=true", "--timeout=120s")
            if target is not None:
                devsan.stop(target)


def _status(dev: devcluster.DevCluster, name: str) -> dict[str, Any]:
    proc = subprocess.run(
        [str(dev.kubectl), f"--kubeconfig={dev.kubeconfig}", "get", "virtualmachine", name,
         "-o", "json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return (yaml.safe_load(proc.stdout) or {}).get("status") or {} if proc.returncode == 0 else {}


def _migration(dev: devcluster.DevCluster, name: str) -> dict[str, Any]:
    proc = subprocess.run(
        [str(dev.kubectl), f"--kubeconfig={dev.kubeconfig}", "get", "migration", name, "-o",
         "json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return (yaml.safe_load(proc.stdout) or {}).get("status") or {} if proc.returncode == 0 else {}


def _apply_vm(dev: devcluster.DevCluster, name: str, backend: str) -> None:
    image = guest.ensure_tiny_image()
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "runStrategy": "Always",
            "memory": "256Mi",
            "disks": [
                {"name": "root", "image": "tiny", "clone": "linked"},
                {"name": "lun", "bus": "scsi", "device": "lun", "backend": backend},
            ],
            "boot": {"kernel": str(image.kernel), "initrd": str(image.initrd),
                     "cmdline": guest.kernel_cmdline(script=guest.SCSI_SCRIPT)},
            "display": {"vnc": False},
        },
    }))  # fmt: skip


def test_guest_sees_the_lun_through_chap_and_the_lun_outlives_the_vm(
    dev: tuple[devcluster.DevCluster, devsan.SAN],
) -> None:
    cluster, target = dev
    backing = target.state / "lun1.img"
    backing.write_bytes(b"kubevisor-lun-marker\n".ljust(512, b"\0") + bytes(LUN_BYTES - 512))
    _apply_vm(cluster, "on-lun", "san-1")
    status = testing.wait_for(
        lambda: (s := _status(cluster, "on-lun")).get("phase") == "Running" and s,
        timeout=180, what="on-lun Running", every=0.5, show=lambda: _status(cluster, "on-lun"),
    )  # fmt: skip
    console = Path(status["consoleLog"])
    log = testing.wait_for(
        lambda: (t := console.read_text(errors="replace") if console.exists() else "")
        and "kubevisor-guest: scsi-read" in t and t,
        timeout=240, what="the guest's SCSI report", every=0.5,
    )  # fmt: skip
    disks = guest.scsi_disks(log)
    # the LUN is tgt's own disk, passed through (not a QEMU HARDDISK), 64 MiB
    assert disks == [("sda", str(LUN_BYTES // 512), "VIRTUAL-DISK", "virtio_scsi")], log
    assert "kubevisor-guest: scsi-read bytes=512" in log
    # the password is not in the domain's definition: libvirt holds it as a secret
    domain = naming.domain_name("default", "on-lun")
    xml = subprocess.run(
        ["virsh", "-c", cluster.nodes[0].libvirt_uri, "dumpxml", domain],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    assert PASSWORD not in xml
    cluster.run_kubectl("delete", "virtualmachine", "on-lun", "--wait=true", "--timeout=120s")
    assert backing.read_bytes()[:21] == b"kubevisor-lun-marker\n"  # the LUN stays


def test_a_wrong_chap_password_says_storage_failed_and_loses_nothing(
    dev: tuple[devcluster.DevCluster, devsan.SAN],
) -> None:
    cluster, target = dev
    backing = target.state / "lun1.img"
    before = backing.read_bytes()[:4096]
    _apply_vm(cluster, "wrong-pass", "san-wrong")
    cond = testing.wait_for(
        lambda: next((c for c in _status(cluster, "wrong-pass").get("conditions") or []
                      if c["type"] == "Ready" and c["reason"] == "StorageFailed"), None),
        timeout=180, what="Ready=False StorageFailed", every=0.5,
        show=lambda: _status(cluster, "wrong-pass"),
    )  # fmt: skip
    assert cond["status"] == "False"
    assert "log in" in cond["message"].lower() or "auth" in cond["message"].lower(), cond
    assert backing.read_bytes()[:4096] == before
    cluster.run_kubectl("delete", "virtualmachine", "wrong-pass", "--wait=true", "--timeout=120s")


def test_a_guest_boots_its_whole_system_from_the_lun(
    dev: tuple[devcluster.DevCluster, devsan.SAN],
) -> None:
    cluster, target = dev
    disk = target.state / "boot.img"
    guest.bootable_disk(disk, cmdline=guest.kernel_cmdline(script=guest.TICKER_SCRIPT))
    backing = target.state / "lun1.img"
    with open(backing, "r+b") as lun, open(disk, "rb") as image:
        lun.write(image.read())  # the LUN's first 32 MiB are now the bootable disk
    cluster.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": "from-lun"},
        "spec": {
            "runStrategy": "Always",
            "memory": "256Mi",
            "disks": [{"name": "lun", "bus": "scsi", "device": "lun", "backend": "san-1"}],
            "boot": {"firmware": "bios"},
            "display": {"vnc": False},
        },
    }))  # fmt: skip
    status = testing.wait_for(
        lambda: (s := _status(cluster, "from-lun")).get("phase") == "Running" and s,
        timeout=180, what="from-lun Running", every=0.5, show=lambda: _status(cluster, "from-lun"),
    )  # fmt: skip
    console = Path(status["consoleLog"])
    testing.wait_for(
        lambda: console.exists() and guest.console_mark(console).tick >= 2,
        timeout=240, what="the guest booted from the LUN and ticks", every=0.5,
        show=lambda: console.read_text(errors="replace")[-2000:] if console.exists() else "",
    )  # fmt: skip
    text = console.read_text(errors="replace")
    assert "SYSLINUX" in text and guest.BOOTED_MARKER in text, text[-2000:]

    mark = guest.console_mark(console)
    there = next(n.name for n in cluster.nodes if n.name != status["nodeName"])
    cluster.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "Migration",
        "metadata": {"name": "from-lun-away", "namespace": "default"},
        "spec": {"vmName": "from-lun", "targetNode": there, "policy": {"allowBlockCopy": False}},
    }))  # fmt: skip
    mig = testing.wait_for(
        lambda: (m := _migration(cluster, "from-lun-away")).get("phase") in ("Succeeded", "Failed")
        and m,
        timeout=240, what="the Migration ends", every=0.5,
        show=lambda: _migration(cluster, "from-lun-away"),
    )  # fmt: skip
    assert mig["phase"] == "Succeeded", mig
    moved = testing.wait_for(
        lambda: (s := _status(cluster, "from-lun")).get("nodeName") == there and s,
        timeout=60, what=f"from-lun runs on {there}", every=0.5,
    )  # fmt: skip
    assert moved["phase"] == "Running"
    # the target's QEMU goes on writing the console the domain was defined with
    testing.wait_for(
        lambda: guest.kept_running(console, mark),
        timeout=60, what="the guest ticks on the target, never booting again", every=0.5,
    )  # fmt: skip
    cluster.run_kubectl("delete", "virtualmachine", "from-lun", "--wait=true", "--timeout=120s")
