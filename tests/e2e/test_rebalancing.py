"""Rebalancing end to end (issue 14): controller + three agents on simulated nodes, real
TCG guests. Under a Balance RebalancePolicy, three VMs started on one node of three spread
out through ordinary Migrations (labelled, named ``<vm>-balance-<pass>``), the guests keep
running (their console ticks continue, they never boot again), and each ends with exactly
one running domain among the three libvirtds; the policy then reports Balanced. Under
Consolidate, VMs spread over three nodes are packed onto one, the emptied nodes are
marked and their libvirtds stopped, and a node comes back when load rises.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.api import rebalancepolicies
from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import guest, nodepower, nodes, testing

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


def test_consolidate_packs_vms_powers_empty_nodes_off_and_back_on(
    dev: devcluster.DevCluster, tmp_path: Path
) -> None:
    """Three VMs, one per node: Consolidate packs them onto one node (75 % of 4 CPUs,
    under the 80 % target), marks the two emptied nodes (Node condition, cordon) and the
    local cluster's power switch (``devenv/nodepower``) stops their libvirtds; a fourth VM
    takes the powered node over the 90 % wake threshold and a node comes back: condition
    False, uncordoned, its libvirtd serving again."""
    names = ["con-a", "con-b", "con-c"]
    sim = list(dev.nodes)
    for i, name in enumerate(names):  # one per node: cordon the others while it lands
        for n in sim:
            if n is not sim[i]:
                dev.run_kubectl("cordon", n.name)
        try:
            assert _boot(dev, name)["nodeName"] == sim[i].name
        finally:
            for n in sim:
                dev.run_kubectl("uncordon", n.name)
    log = (tmp_path / "nodepower.log").open("w")
    follower = subprocess.Popen(
        [sys.executable, "-m", "kubevisor.devenv.nodepower", "--cluster", CLUSTER,
         "--kubeconfig", str(dev.kubeconfig), "--kubectl", str(dev.kubectl)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    policy = {
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "RebalancePolicy",
        "metadata": {"name": rebalancepolicies.NAME},
        "spec": {
            "mode": "Consolidate",
            "intervalSeconds": 5,
            "maxMovesPerPass": 5,
            "consolidate": {"targetUtilizationPercent": 80, "wakeUtilizationPercent": 90},
        },
    }
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(policy))
    try:
        packed = _poll(
            "three VMs on one node",
            lambda: _packed(dev, names),
            limit=MOVE_S,
            show=lambda: _status(dev, "rebalancepolicy", rebalancepolicies.NAME),
        )
        (kept,) = set(packed.values())
        emptied = [n for n in sim if n.name != kept]
        print(f"\npacked onto {kept}; emptied {[n.name for n in emptied]}")
        for n in emptied:
            _poll(
                f"{n.name} marked and its libvirtd stopped",
                lambda n=n: _power_off(dev, n.name) == "True" and not _serving(n),
                limit=120,
                show=lambda: _status(dev, "rebalancepolicy", rebalancepolicies.NAME),
            )
            assert (_get(dev, "node", n.name) or {})["spec"].get("unschedulable") is True
        _boot(dev, "con-load")  # 4 of 4 CPUs on the powered node: over 90 %
        woken = _poll(
            "a node woken, its libvirtd serving",
            lambda: [n.name for n in emptied if _power_off(dev, n.name) == "False" and _serving(n)],
            limit=180,
            show=lambda: _status(dev, "rebalancepolicy", rebalancepolicies.NAME),
        )
        print(f"woken: {woken}")
        for name in woken:
            assert not (_get(dev, "node", name) or {})["spec"].get("unschedulable")
    finally:
        follower.kill()
        follower.wait()
        log.close()
        print((tmp_path / "nodepower.log").read_text())
        dev.run_kubectl("delete", "rebalancepolicy", rebalancepolicies.NAME, "--ignore-not-found")
        for n in sim:  # whatever the outcome: every libvirtd serving, every node uncordoned
            nodepower.start_libvirtd(n)
            dev.run_kubectl("uncordon", n.name)
        dev.run_kubectl("delete", "migrations", "--all", "--wait=true", "--timeout=120s")
        dev.run_kubectl("delete", "virtualmachines", "--all", "--wait=true", "--timeout=120s")


def _packed(dev: devcluster.DevCluster, names: list[str]) -> dict[str, Any] | None:
    """Where the VMs are, once they all run on one node (None before)."""
    where = {n: _status(dev, "virtualmachine", n) for n in names}
    nodes_ = {s.get("nodeName") for s in where.values()}
    if len(nodes_) != 1 or any(s.get("phase") != "Running" for s in where.values()):
        return None
    return {n: s.get("nodeName") for n, s in where.items()}


def _power_off(dev: devcluster.DevCluster, node: str) -> str | None:
    for c in ((_get(dev, "node", node) or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == rebalancepolicies.NODE_POWER_OFF:
            return str(c.get("status"))
    return None


def _serving(node: nodes.SimNode) -> bool:
    return (
        subprocess.run(
            ["virsh", "-q", "-c", node.libvirt_uri, "uri"], capture_output=True, check=False
        ).returncode
        == 0
    )
