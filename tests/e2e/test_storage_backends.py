"""StorageBackends end to end with a real NFS server (nfs-ganesha, user space, in its own
network namespace on the fabric; devenv/nas.py): the node's agent reports the backend it
reaches in its Lease, QEMU's own NFS client on that node writes an image on the export,
a backend nobody serves makes a VM Unschedulable with a reason naming it, and a cut link
to the server drops the backend from the Lease (and its return brings it back) with the
server's files untouched.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.api import nodes as nodecontract
from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import nas as devnas
from kubevisor.devenv import testing

pytestmark = pytest.mark.e2e

CLUSTER = "kvstb"


@pytest.fixture(scope="module")
def dev() -> Iterator[tuple[devcluster.DevCluster, devnas.NAS]]:
    tools = ("libvirtd", "qemu-img", "ganesha.nfsd", "rpcbind")
    with testing.dev_cluster(CLUSTER, nodes_count=1, stop_timeout=5.0, tools=tools) as dev:
        server = None
        try:
            server = devnas.start(CLUSTER, dev.base_dir / CLUSTER / "nas")
            yield dev, server
        finally:
            if server is not None:
                devnas.stop(server)


def _get(dev: devcluster.DevCluster, *args: str) -> dict[str, Any] | None:
    proc = subprocess.run(
        [str(dev.kubectl), f"--kubeconfig={dev.kubeconfig}", "get", *args, "-o", "json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def _reached(dev: devcluster.DevCluster, node: str) -> dict[str, str]:
    lease = _get(dev, "lease", "-n", nodecontract.LEASE_NAMESPACE, node) or {}
    return dict(nodecontract.parse(lease).capacity.storage_backends)


def _backend(name: str, server: str, export: Path) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "kubevisor.io/v1alpha1",
            "kind": "StorageBackend",
            "metadata": {"name": name},
            "spec": {"type": "nfs", "nfs": {"server": server, "export": str(export)}},
        }
    )


def test_nfs_backend_reached_used_and_lost(dev: tuple[devcluster.DevCluster, devnas.NAS]) -> None:
    cluster, server = dev
    node = cluster.nodes[0]
    cluster.run_kubectl("apply", "-f", "-", stdin=_backend("nas-1", server.address, server.export))
    nobody = str(devnas.ADDRESS).rsplit(".", 1)[0] + ".251"
    cluster.run_kubectl("apply", "-f", "-", stdin=_backend("gone", nobody, Path("/x")))

    # the controller accepts each backend (cluster-scoped kind, Ready=True Accepted)
    def accepted() -> bool:
        conds = ((_get(cluster, "storagebackend", "nas-1") or {}).get("status") or {}).get(
            "conditions"
        ) or []
        return any(c["type"] == "Ready" and c["reason"] == "Accepted" for c in conds)

    testing.wait_for(accepted, timeout=60, what="nas-1 Ready=True Accepted", every=0.5)
    # the agent reaches the ganesha server, not the address nobody serves
    testing.wait_for(
        lambda: _reached(cluster, node.name) == {"nas-1": "nfs"},
        timeout=60, what="the Lease lists nas-1 (and not gone)", every=0.5,
    )  # fmt: skip

    # QEMU's own NFS client (libnfs, qemu-block-extra) from the node's network writes
    # an image on the export and reads its header back
    url = f"nfs://{server.address}{server.export}/probe.qcow2"
    made = subprocess.run(
        ["ip", "netns", "exec", node.netns, "qemu-img", "create", "-q", "-f", "qcow2", url, "16M"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    info = subprocess.run(
        ["ip", "netns", "exec", node.netns, "qemu-img", "info", "--output=json", url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(info.stdout)["virtual-size"] == 16 * 2**20
    assert (server.export / "probe.qcow2").is_file()

    # a VM whose disk names the unserved backend is not placed, and says why
    vm = {
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": "on-gone"},
        "spec": {
            "runStrategy": "Always",
            "memory": "128Mi",
            "disks": [{"name": "data", "size": "16Mi", "backend": "gone"}],
            "display": {"vnc": False},
        },
    }
    cluster.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(vm))

    def scheduled_false() -> dict[str, Any] | None:
        status = (_get(cluster, "virtualmachine", "on-gone") or {}).get("status") or {}
        for c in status.get("conditions") or []:
            if c["type"] == "Scheduled" and c["status"] == "False":
                return dict(c)
        return None

    cond = testing.wait_for(scheduled_false, timeout=60, what="on-gone Scheduled=False", every=0.5)
    assert cond["reason"] == "Unschedulable", cond
    assert f"{node.name}: does not reach StorageBackend gone" in cond["message"], cond

    # the NAS becomes unreachable: the backend leaves the Lease; its files stay
    devnas.cut(server)
    try:
        testing.wait_for(
            lambda: _reached(cluster, node.name) == {},
            timeout=90, what="the Lease drops nas-1 while the NAS is cut off", every=0.5,
        )  # fmt: skip
    finally:
        devnas.restore(server)
    assert (server.export / "probe.qcow2").is_file()
    testing.wait_for(
        lambda: _reached(cluster, node.name) == {"nas-1": "nfs"},
        timeout=90, what="the Lease lists nas-1 again", every=0.5,
    )  # fmt: skip
    cluster.run_kubectl("delete", "virtualmachine", "on-gone", "--wait=true", "--timeout=60s")
    cluster.run_kubectl("delete", "storagebackend", "nas-1", "gone")
