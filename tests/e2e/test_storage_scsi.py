"""Virtual SCSI end to end: a VM whose disk has ``bus: scsi`` boots in real QEMU through
controller + agent on a simulated node, and the guest's own kernel finds that disk as
/dev/sda behind a virtio-scsi controller (what the guest prints on its serial console).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import guest, testing

pytestmark = pytest.mark.e2e

CLUSTER = "kvsto"


@pytest.fixture(scope="module")
def dev() -> Iterator[devcluster.DevCluster]:
    with testing.dev_cluster(CLUSTER, nodes_count=1, stop_timeout=5.0) as dev:
        yield dev


def _vm(dev: devcluster.DevCluster, name: str) -> dict[str, Any] | None:
    proc = subprocess.run(
        [str(dev.kubectl), f"--kubeconfig={dev.kubeconfig}", "get", "virtualmachine", name,
         "-o", "yaml"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return yaml.safe_load(proc.stdout) if proc.returncode == 0 else None


def test_guest_sees_scsi_disk_as_sda(dev: devcluster.DevCluster) -> None:
    image = guest.ensure_tiny_image()  # the image with virtio_scsi + sd_mod in its init
    vm = {
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": "scsi-1"},
        "spec": {
            "runStrategy": "Always",
            "memory": "256Mi",
            "disks": [
                {"name": "root", "image": "tiny", "clone": "linked"},
                {"name": "data", "size": "48Mi", "bus": "scsi"},
            ],
            "boot": {
                "kernel": str(image.kernel),
                "initrd": str(image.initrd),
                "cmdline": guest.kernel_cmdline(script=guest.SCSI_SCRIPT),
            },
            "display": {"vnc": False},
        },
    }
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(vm))

    def running() -> dict[str, Any] | None:
        got = _vm(dev, "scsi-1")
        return got if got and (got.get("status") or {}).get("phase") == "Running" else None

    status = testing.wait_for(running, timeout=180, what="phase Running", every=0.5)["status"]
    console = Path(status["consoleLog"])

    def read_back() -> str | None:
        text = console.read_text(errors="replace") if console.exists() else ""
        return text if "kubevisor-guest: scsi-read" in text else None

    log = testing.wait_for(read_back, timeout=240, what="the guest's SCSI report", every=0.5)
    disks = guest.scsi_disks(log)
    # one SCSI disk, 48 MiB, a QEMU SCSI disk on the virtio-scsi host adapter; the
    # virtio root disk stays vda (it is not renumbered by the SCSI one)
    assert disks == [("sda", str(48 * 1024 * 1024 // 512), "QEMUHARDDISK", "virtio_scsi")], log
    assert "kubevisor-guest: disk vda" in log
    assert "kubevisor-guest: scsi-read bytes=512" in log
    dev.run_kubectl("delete", "virtualmachine", "scsi-1", "--wait=true", "--timeout=120s")
