"""VM disks on an NFS StorageBackend, end to end (issue 15): a real NFS server
(nfs-ganesha in its own network namespace on the fabric, devenv/nas.py), two simulated
nodes, the controller and both agents.

- A VM whose root (a linked clone of the node-local tiny image) and data disk live on the
  export boots through QEMU's own NFS client; its images are files in the export's root
  (``<namespace>.<vm>.<disk>.qcow2``), and no disk file is made under the node's state.
- The guest writes its tick number into the first sector of its NFS data disk; the VM
  migrates to the other node without block copy (``allowBlockCopy: false``), and the
  guest on the new node goes on writing into the same image on the export.
- A backend whose export the server does not have: the VM says StorageFailed with the
  NFS client's words, and nothing on the export is touched.
- Deleting the VM removes its images from the export; a ``retain`` disk stays.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import guest, testing
from kubevisor.devenv import nas as devnas

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "kvnfs"
NS = "default"
BOOT_S = 240.0
WRITER_SCRIPT = (
    '(i=0; while :; do i=$((i+1)); echo "kubevisor-guest: tick $i" >/dev/console; '
    'echo "marker-$i" | dd of=/dev/vdb bs=512 count=1 conv=sync,fsync 2>/dev/null; '
    "sleep 1; done) &"
)
"""Every second the guest overwrites the first sector of its data disk with its tick."""


def _poll(what: str, check: Callable[[], Any], *, limit: float, show: Any = None) -> Any:
    return testing.wait_for(check, timeout=limit, what=what, every=0.5, show=show)


@pytest.fixture(scope="module")
def dev() -> Iterator[tuple[devcluster.DevCluster, devnas.NAS]]:
    tools = ("libvirtd", "qemu-img", "ganesha.nfsd", "rpcbind", "nsenter")
    with testing.dev_cluster(CLUSTER, nodes_count=2, stop_timeout=5.0, tools=tools) as dev:
        server = None
        try:
            server = devnas.start(CLUSTER, dev.base_dir / CLUSTER / "nas")
            dev.run_kubectl("apply", "-f", str(REPO / "docs/examples/vmtemplate.yaml"))
            for name, export in (("nas-1", str(server.export)), ("nas-wrong", "/no/such/export")):
                dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
                    "apiVersion": "kubevisor.io/v1alpha1",
                    "kind": "StorageBackend",
                    "metadata": {"name": name},
                    "spec": {"type": "nfs", "nfs": {"server": server.address, "export": export}},
                }))  # fmt: skip
            yield dev, server
        finally:
            dev.run_kubectl("delete", "virtualmachines,migrations", "--all", "--wait=true",
                            "--timeout=120s")  # fmt: skip
            if server is not None:
                devnas.stop(server)


def _get(dev: devcluster.DevCluster, kind: str, name: str) -> dict[str, Any]:
    proc = subprocess.run(
        [str(dev.kubectl), f"--kubeconfig={dev.kubeconfig}", "get", kind, name, "-n", NS,
         "-o", "json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return yaml.safe_load(proc.stdout) if proc.returncode == 0 else {}


def _status(dev: devcluster.DevCluster, kind: str, name: str) -> dict[str, Any]:
    return _get(dev, kind, name).get("status") or {}


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})


def _apply_vm(dev: devcluster.DevCluster, name: str, disks: list[dict[str, Any]]) -> None:
    template = yaml.safe_load((REPO / "docs/examples/vmtemplate.yaml").read_text())
    boot = {k: v for k, v in template["spec"]["boot"].items() if k != "cmdline"}
    body = {
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "runStrategy": "Always",
            "templateRef": {"name": "tiny"},
            "boot": {**boot, "cmdline": guest.kernel_cmdline(script=WRITER_SCRIPT)},
            "disks": disks,
        },
    }
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))


def _node_disk_files(cluster: devcluster.DevCluster) -> list[Path]:
    """Disk files under every node's state and shared directories."""
    return [
        p
        for n in cluster.nodes
        for root in (n.state_dir / "kubevisor" / "disks", n.shared_dir / "disks")
        for p in root.rglob("*.qcow2")
        if root.is_dir()
    ]


def _marker(image: Path, scratch: Path) -> int:
    """The tick in the first sector of a qcow2 image on the export (read with -U: the
    guest holds it open)."""
    raw = scratch / "head.raw"
    subprocess.run(
        ["qemu-img", "dd", "-U", "-f", "qcow2", "-O", "raw", "bs=512", "count=1",
         f"if={image}", f"of={raw}"],
        check=True, capture_output=True,
    )  # fmt: skip
    head = raw.read_bytes().split(b"\n", 1)[0]
    return int(head[len(b"marker-") :]) if head.startswith(b"marker-") else 0


def test_vm_on_nfs_boots_migrates_without_block_copy_and_is_cleaned_up(
    dev: tuple[devcluster.DevCluster, devnas.NAS], tmp_path: Path
) -> None:
    cluster, server = dev
    name = "on-nfs"
    _apply_vm(cluster, name, [
        {"name": "root", "image": "tiny", "size": "1Gi", "clone": "linked", "backend": "nas-1"},
        {"name": "data", "size": "16Mi", "backend": "nas-1"},
        {"name": "keep", "size": "8Mi", "backend": "nas-1", "retain": True},
    ])  # fmt: skip
    st = _poll(f"{name} Running", lambda: (s := _status(cluster, "virtualmachine", name))
               .get("phase") == "Running" and s, limit=BOOT_S,
               show=lambda: _status(cluster, "virtualmachine", name))  # fmt: skip
    here = st["nodeName"]
    there = next(n.name for n in cluster.nodes if n.name != here)
    images = {d: server.export / f"{NS}.{name}.{d}.qcow2" for d in ("root", "data", "keep")}
    assert all(p.is_file() for p in images.values()), sorted(server.export.iterdir())
    # a linked clone on the export whose base is the node-local tiny image
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(images["root"])],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    backing = yaml.safe_load(info)["backing-filename"]
    assert backing.startswith("/") and backing.endswith("tiny.qcow2"), backing
    assert _node_disk_files(cluster) == []
    first = _poll("the guest writes markers into its NFS disk",
                  lambda: _marker(images["data"], tmp_path) >= 2 and
                  _marker(images["data"], tmp_path), limit=BOOT_S)  # fmt: skip

    # live migration to node-2: the disks stay where they are (no block copy allowed)
    cluster.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "Migration",
        "metadata": {"name": f"{name}-away", "namespace": NS},
        "spec": {"vmName": name, "targetNode": there, "policy": {"allowBlockCopy": False}},
    }))  # fmt: skip
    mig = _poll("Migration Succeeded", lambda: (s := _status(cluster, "migration", f"{name}-away"))
                .get("phase") in ("Succeeded", "Failed") and s, limit=240,
                show=lambda: _status(cluster, "migration", f"{name}-away"))  # fmt: skip
    assert mig["phase"] == "Succeeded", mig
    _poll(f"the VM runs on {there}", lambda: _status(cluster, "virtualmachine", name)
          .get("nodeName") == there, limit=60)  # fmt: skip
    moved = _marker(images["data"], tmp_path)
    _poll(f"the guest on {there} goes on writing into the same image",
          lambda: _marker(images["data"], tmp_path) > moved + 1, limit=120)  # fmt: skip
    assert moved > first
    assert _node_disk_files(cluster) == [], "no block copy: no disk file on any node"

    # deleting the VM deletes its own images, never the retained one
    cluster.run_kubectl("delete", "virtualmachine", name, "-n", NS, "--wait=true",
                        "--timeout=120s")  # fmt: skip
    assert not images["root"].exists() and not images["data"].exists()
    assert images["keep"].is_file()
    images["keep"].unlink()


def test_a_backend_whose_export_is_missing_says_storage_failed(
    dev: tuple[devcluster.DevCluster, devnas.NAS],
) -> None:
    cluster, server = dev
    before = sorted(p.name for p in server.export.iterdir())
    name = "on-wrong"
    _apply_vm(cluster, name, [{"name": "data", "size": "16Mi", "backend": "nas-wrong"}])
    cond = _poll("Ready=False StorageFailed", lambda: (c := _ready(
        _status(cluster, "virtualmachine", name))).get("reason") == "StorageFailed" and c,
        limit=120, show=lambda: _status(cluster, "virtualmachine", name))  # fmt: skip
    assert cond["status"] == "False"
    assert "/no/such/export" in cond["message"], cond
    assert sorted(p.name for p in server.export.iterdir()) == before
    cluster.run_kubectl("delete", "virtualmachine", name, "-n", NS, "--wait=true",
                        "--timeout=120s")  # fmt: skip
