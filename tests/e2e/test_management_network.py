"""The management network (issue 15): each simulated node has a ``mgmt0`` NIC on a
network of its own (devenv: 10.78.0.0/24, a bridge apart from the fabric), and its agent
runs with ``--management-interface=mgmt0``. A live migration's stream then crosses the
management link only: the bytes counted on the target's ``mgmt0`` account for what the
migration moved, and the VM LAN's uplink (``fab0``, the port of the bridge the guests'
taps are on) stays flat.
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
from kubevisor.devenv import guest, nodes, testing

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "kvmgmt"


@pytest.fixture(scope="module")
def dev() -> Iterator[devcluster.DevCluster]:
    with testing.dev_cluster(CLUSTER, nodes_count=2, stop_timeout=5.0, management=True) as dev:
        try:
            dev.run_kubectl("apply", "-f", str(REPO / "docs/examples/vmtemplate.yaml"))
            yield dev
        finally:
            dev.run_kubectl("delete", "virtualmachines,migrations", "--all", "--wait=true",
                            "--timeout=120s")  # fmt: skip


def _json(dev: devcluster.DevCluster, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [str(dev.kubectl), f"--kubeconfig={dev.kubeconfig}", "get", *args, "-o", "json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def _status(dev: devcluster.DevCluster, kind: str, name: str) -> dict[str, Any]:
    return _json(dev, kind, name).get("status") or {}


def _finished(status: dict[str, Any]) -> dict[str, Any] | None:
    """The Migration's status once it failed, or succeeded with its final figures."""
    if status.get("phase") == "Failed":
        return status
    if status.get("phase") == "Succeeded" and status.get("bytesTransferred") is not None:
        return status
    return None


def _counters(node: nodes.SimNode) -> dict[str, int]:
    """rx+tx bytes of the node's management NIC and of its VM LAN uplink."""
    out = {}
    for link in (nodes.NODE_MANAGEMENT, nodes.NODE_UPLINK):
        total = 0
        for way in ("rx_bytes", "tx_bytes"):
            total += int(subprocess.run(
                ["ip", "netns", "exec", node.netns, "cat",
                 f"/sys/class/net/{link}/statistics/{way}"],
                capture_output=True, text=True, check=True,
            ).stdout)  # fmt: skip
        out[link] = total
    return out


def test_a_migration_crosses_the_management_network_not_the_vm_lan(
    dev: devcluster.DevCluster,
) -> None:
    for node in dev.nodes:
        capacity = testing.wait_for(
            lambda n=node: (lease := _json(dev, "lease", "-n", nodecontract.LEASE_NAMESPACE,
                                           n.name)) and nodecontract.parse(lease).capacity,
            timeout=60, what=f"{node.name}'s Lease", every=0.5,
        )  # fmt: skip
        assert capacity.management_address == node.management_ip
        assert capacity.migration_uri == node.management_uri
    template = yaml.safe_load((REPO / "docs/examples/vmtemplate.yaml").read_text())
    boot = {k: v for k, v in template["spec"]["boot"].items() if k != "cmdline"}
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": "over-mgmt", "namespace": "default"},
        "spec": {"runStrategy": "Always", "templateRef": {"name": "tiny"},
                 "boot": {**boot, "cmdline": guest.kernel_cmdline(script=guest.TICKER_SCRIPT)}},
    }))  # fmt: skip
    st = testing.wait_for(
        lambda: (s := _status(dev, "virtualmachine", "over-mgmt")).get("phase") == "Running" and s,
        timeout=240, what="over-mgmt Running", every=0.5,
    )  # fmt: skip
    source = st["nodeName"]
    target = next(n for n in dev.nodes if n.name != source)
    console = Path(st["consoleLog"])
    testing.wait_for(lambda: console.exists() and guest.console_mark(console).tick >= 2,
                     timeout=240, what="the guest ticks")  # fmt: skip
    before = _counters(target)
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "Migration",
        "metadata": {"name": "over-mgmt-1", "namespace": "default"},
        "spec": {"vmName": "over-mgmt", "targetNode": target.name},
    }))  # fmt: skip
    mig = testing.wait_for(
        lambda: _finished(_status(dev, "migration", "over-mgmt-1")),
        timeout=240, what="Migration finished with its figures", every=0.5,
        show=lambda: _status(dev, "migration", "over-mgmt-1"),
    )  # fmt: skip
    after = _counters(target)
    assert mig["phase"] == "Succeeded", mig
    moved = int(mig["bytesTransferred"])
    on_mgmt = after[nodes.NODE_MANAGEMENT] - before[nodes.NODE_MANAGEMENT]
    on_lan = after[nodes.NODE_UPLINK] - before[nodes.NODE_UPLINK]
    print(f"\nmigration moved {moved} bytes; target's mgmt0 counted {on_mgmt}, fab0 {on_lan}")
    assert on_mgmt >= 0.9 * moved, (moved, on_mgmt, on_lan)
    assert on_lan < 0.01 * moved, (moved, on_mgmt, on_lan)
