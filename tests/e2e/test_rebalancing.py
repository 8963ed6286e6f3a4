"""Rebalancing end to end (issue 14): controller + three agents on simulated nodes, real
TCG guests. Under a Balance RebalancePolicy, three VMs started on one node of three spread
out through ordinary Migrations (labelled, named ``<vm>-balance-<pass>``), the guests keep
running (their console ticks continue, they never boot again), and each ends with exactly
one running domain among the three libvirtds; the policy then reports Balanced.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.api import rebalancepolicies
from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import guest, nodes, testing

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "kvrebal"
NS = "default"
BOOT_S = 240.0
MOVE_S = 400.0


def _poll(what: str, check: Callable[[], Any], *, limit: float, show: Any = None) -> Any:
    return testing.wait_for(check, timeout=limit, what=what, every=0.5, show=show)


@pytest.fixture(scope="module")
def dev() -> Iterator[devcluster.DevCluster]:
    testing.require_root("a dev cluster (namespaces, mounts, libvirtd)")
    testing.require_tools("libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "nsenter")
    testing.require_tiny_guest(devcluster.GUEST_CACHE)
    try:
        # --cpu=4: CPU is the dominant share, three 1-core guests fill one node to 75 %
        dev = devcluster.up(CLUSTER, nodes_count=3, stop_timeout=5.0, agent_args=("--cpu=4",))
    except BaseException:
        devcluster.down(CLUSTER)
        raise
    try:
        dev.run_kubectl("apply", "-f", str(REPO / "docs/examples/vmtemplate.yaml"))
        yield dev
    finally:
        devcluster.down(CLUSTER)


def _get(dev: devcluster.DevCluster, kind: str, name: str) -> dict[str, Any] | None:
    proc = subprocess.run(
        [str(dev.kubectl), f"--kubeconfig={dev.kubeconfig}", "get", kind, name, "-o", "yaml"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return yaml.safe_load(proc.stdout) if proc.returncode == 0 else None


def _status(dev: devcluster.DevCluster, kind: str, name: str) -> dict[str, Any]:
    return (_get(dev, kind, name) or {}).get("status") or {}


def _running_on(node: nodes.SimNode) -> set[str]:
    out = subprocess.run(
        ["virsh", "-c", node.libvirt_uri, "list", "--state-running", "--name"],
        capture_output=True, text=True, check=False, timeout=30,
    ).stdout  # fmt: skip
    return {line.strip() for line in out.splitlines() if line.strip()}


def _boot(dev: devcluster.DevCluster, name: str, **extra: Any) -> dict[str, Any]:
    template = yaml.safe_load((REPO / "docs/examples/vmtemplate.yaml").read_text())
    boot = {k: v for k, v in template["spec"]["boot"].items() if k != "cmdline"}
    body = {
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "runStrategy": "Always",
            "templateRef": {"name": "tiny"},
            "boot": {**boot, "cmdline": guest.kernel_cmdline(script=guest.TICKER_SCRIPT)},
            **extra,
        },
    }
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))
    st = _poll(
        f"{name} Running",
        lambda: (s := _status(dev, "virtualmachine", name)).get("phase") == "Running" and s,
        limit=BOOT_S,
        show=lambda: _status(dev, "virtualmachine", name),
    )
    console = Path(st["consoleLog"])
    _poll(f"{name} ticking", lambda: console.exists() and guest.console_mark(console).tick >= 2,
          limit=BOOT_S)  # fmt: skip
    return dict(st)


def test_balance_spreads_three_vms_from_one_node_through_migrations(
    dev: devcluster.DevCluster,
) -> None:
    first, *others = (n.name for n in dev.nodes)
    for n in others:  # everything lands on the first node
        dev.run_kubectl("cordon", n)
    names = ["bal-a", "bal-b", "bal-c"]
    marks = {}
    try:
        for name in names:
            st = _boot(dev, name)
            assert st["nodeName"] == first
            marks[name] = (Path(st["consoleLog"]), guest.console_mark(Path(st["consoleLog"])))
    finally:
        for n in others:
            dev.run_kubectl("uncordon", n)
    policy = {
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "RebalancePolicy",
        "metadata": {"name": rebalancepolicies.NAME},
        "spec": {
            "mode": "Balance",
            "intervalSeconds": 5,
            "maxMovesPerPass": 5,
            "balance": {"thresholdPercent": 10},
        },
    }
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(policy))
    try:
        placed = _poll(
            "three VMs on three nodes",
            lambda: (
                len(where := {n: _status(dev, "virtualmachine", n).get("nodeName") for n in names})
                == 3
                and len(set(where.values())) == 3
                and all(_status(dev, "virtualmachine", n).get("phase") == "Running" for n in names)
                and where
            ),
            limit=MOVE_S,
            show=lambda: _status(dev, "rebalancepolicy", rebalancepolicies.NAME),
        )
        print(f"\nafter Balance: {placed}")
        migs = yaml.safe_load(
            dev.run_kubectl(
                "get", "migrations", "-l", rebalancepolicies.LABEL_REBALANCE, "-o", "yaml"
            )
        )["items"]
        done = [m for m in migs if (m.get("status") or {}).get("phase") == "Succeeded"]
        assert len(done) == 2, [
            (m["metadata"]["name"], m.get("status", {}).get("phase")) for m in migs
        ]
        for m in done:
            assert m["metadata"]["name"].startswith(f"{m['spec']['vmName']}-balance-")
            assert m["status"]["sourceNode"] == first
        for name in names:
            console, mark = marks[name]
            _poll(f"{name} keeps ticking", lambda c=console, k=mark: guest.kept_running(c, k),
                  limit=60)  # fmt: skip
            hosts = [n.name for n in dev.nodes if f"{NS}_{name}" in _running_on(n)]
            assert hosts == [placed[name]], f"{name} runs on {hosts}"
        status = _poll(
            "the policy settles",
            lambda: (
                (s := _status(dev, "rebalancepolicy", rebalancepolicies.NAME)).get("phase")
                == "Balanced"
                and s
            ),
            limit=120,
        )
        print(f"policy: {status.get('message')}")
    finally:
        dev.run_kubectl("delete", "rebalancepolicy", rebalancepolicies.NAME, "--ignore-not-found")
        dev.run_kubectl("delete", "migrations", "--all", "--wait=true", "--timeout=120s")
        dev.run_kubectl("delete", "virtualmachines", "--all", "--wait=true", "--timeout=120s")
