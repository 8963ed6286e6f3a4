"""Rebalancing end to end (issue 14): controller + three agents on simulated nodes, real
TCG guests. Under a Balance RebalancePolicy, three VMs started on one node of three spread
out through ordinary Migrations (labelled, named ``<vm>-balance-<pass>``), the guests keep
running (their console ticks continue, they never boot again), and each ends with exactly
one running domain among the three libvirtds; the policy then reports Balanced. Under
Consolidate, VMs spread over three nodes are packed onto one, the emptied nodes are
marked and their libvirtds stopped, and a node comes back when load rises.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.api import rebalancepolicies
from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import copies, guest, nodepower, testing, vmops

pytestmark = pytest.mark.e2e

CLUSTER = "kvrebal"
NS = vmops.NS
MOVE_S = 400.0


@pytest.fixture(scope="module")
def dev() -> Iterator[devcluster.DevCluster]:
    # --cpu=4: CPU is the dominant share, three 1-core guests fill one node to 75 %.
    # The cluster runs its power switch (devenv/nodepower), as hack/up's does.
    with testing.dev_cluster(
        CLUSTER, nodes_count=3, stop_timeout=5.0, agent_args=("--cpu=4",)
    ) as dev:
        dev.run_kubectl("apply", "-f", str(vmops.TEMPLATE))
        yield dev


@pytest.fixture(scope="module")
def two_copies(dev: devcluster.DevCluster) -> Iterator[copies.TwoCopies]:
    """Every node's libvirtd read throughout the module: no VM ever runs on two nodes
    at once while the rebalancer moves them (every 0.5 s: three nodes are nine virsh
    calls a round on a two-core machine that also runs the guests)."""
    with copies.TwoCopies(dev.nodes, every=0.5) as watcher:
        yield watcher
    assert watcher.polls > 0
    assert watcher.seen == [], f"two running copies seen: {watcher.seen[:5]}"


def test_balance_spreads_three_vms_from_one_node_through_migrations(
    dev: devcluster.DevCluster, two_copies: copies.TwoCopies
) -> None:
    first, *others = (n.name for n in dev.nodes)
    for n in others:  # everything lands on the first node
        dev.run_kubectl("cordon", n)
    names = ["bal-a", "bal-b", "bal-c"]
    marks = {}
    try:
        for name in names:
            st = vmops.boot(dev, name)
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
        placed = vmops.poll(
            "three VMs on three nodes",
            lambda: _spread(dev, names),
            limit=MOVE_S,
            show=lambda: vmops.status(dev, "rebalancepolicy", rebalancepolicies.NAME),
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
            vmops.poll(f"{name} keeps ticking", lambda c=console, k=mark: guest.kept_running(c, k),
                  limit=60)  # fmt: skip
            hosts = [n.name for n in dev.nodes if f"{NS}_{name}" in copies.running(n)]
            assert hosts == [placed[name]], f"{name} runs on {hosts}"
        status = vmops.poll(
            "the policy settles",
            lambda: (
                (s := vmops.status(dev, "rebalancepolicy", rebalancepolicies.NAME)).get("phase")
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
    dev: devcluster.DevCluster, two_copies: copies.TwoCopies
) -> None:
    """Three VMs, one per node: Consolidate packs them onto one node (75 % of 4 CPUs,
    under the 80 % target), marks the two emptied nodes (Node condition, cordon) and the
    cluster's power switch (``devenv/nodepower``, started by ``devcluster.up``) stops their
    libvirtds; a fourth VM takes the powered node over the 90 % wake threshold and a node
    comes back: condition False, uncordoned, its libvirtd serving again. A fifth VM (no
    room left on the packed node) is then placed on the woken node and runs there, with
    the agent that ran before the power-off (it reconnected to the new libvirtd; no agent
    restart)."""
    names = ["con-a", "con-b", "con-c"]
    sim = list(dev.nodes)
    agents = {n.name: dev.pids[f"agent-{n.name}"] for n in sim}
    for i, name in enumerate(names):  # one per node: cordon the others while it lands
        for n in sim:
            if n is not sim[i]:
                dev.run_kubectl("cordon", n.name)
        try:
            assert vmops.boot(dev, name)["nodeName"] == sim[i].name
        finally:
            for n in sim:
                dev.run_kubectl("uncordon", n.name)
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
    policy_status = lambda: vmops.status(dev, "rebalancepolicy", rebalancepolicies.NAME)  # noqa: E731
    try:
        packed = vmops.poll(
            "three VMs on one node", lambda: _packed(dev, names), limit=MOVE_S, show=policy_status
        )
        (kept,) = set(packed.values())
        emptied = [n for n in sim if n.name != kept]
        print(f"\npacked onto {kept}; emptied {[n.name for n in emptied]}")
        for n in emptied:
            vmops.poll(
                f"{n.name} marked and its libvirtd stopped",
                lambda n=n: _power_off(dev, n.name) == "True" and not nodepower.serving(n),
                limit=120,
                show=policy_status,
            )
            assert (vmops.get(dev, "node", n.name) or {})["spec"].get("unschedulable") is True
        vmops.boot(dev, "con-load")  # 4 of 4 CPUs on the powered node: over 90 %
        woken = vmops.poll(
            "a node woken, its libvirtd serving",
            lambda: [
                n.name
                for n in emptied
                if _power_off(dev, n.name) == "False" and nodepower.serving(n)
            ],
            limit=180,
            show=policy_status,
        )
        print(f"woken: {woken}")
        for name in woken:
            assert not (vmops.get(dev, "node", name) or {})["spec"].get("unschedulable")
        st = vmops.boot(dev, "con-more")  # the packed node is full: only a woken one fits
        assert st["nodeName"] in woken, st["nodeName"]
        host = next(n for n in sim if n.name == st["nodeName"])
        assert f"{NS}_con-more" in copies.running(host)
        assert dev.pids[f"agent-{host.name}"] == agents[host.name]
        assert not devcluster.gone(agents[host.name]), "the woken node's agent exited"
        log = dev.log(f"agent-{host.name}").read_text(errors="replace")
        assert "reconnected to" in log, "the agent never saw its libvirtd go and come back"
    finally:
        print(dev.log("nodepower").read_text(errors="replace")[-2000:])
        dev.run_kubectl("delete", "rebalancepolicy", rebalancepolicies.NAME, "--ignore-not-found")
        for n in sim:  # whatever the outcome: every libvirtd serving, every node uncordoned
            nodepower.start_libvirtd(n)
            dev.run_kubectl("uncordon", n.name)
        dev.run_kubectl("delete", "migrations", "--all", "--wait=true", "--timeout=120s")
        dev.run_kubectl("delete", "virtualmachines", "--all", "--wait=true", "--timeout=120s")


def _spread(dev: devcluster.DevCluster, names: list[str]) -> dict[str, Any] | None:
    """Where the VMs are, once each runs on a node of its own (None before)."""
    where = {n: vmops.status(dev, "virtualmachine", n) for n in names}
    if len({s.get("nodeName") for s in where.values()}) != len(names):
        return None
    if any(s.get("phase") != "Running" for s in where.values()):
        return None
    return {n: s.get("nodeName") for n, s in where.items()}


def _packed(dev: devcluster.DevCluster, names: list[str]) -> dict[str, Any] | None:
    """Where the VMs are, once they all run on one node (None before)."""
    where = {n: vmops.status(dev, "virtualmachine", n) for n in names}
    nodes_ = {s.get("nodeName") for s in where.values()}
    if len(nodes_) != 1 or any(s.get("phase") != "Running" for s in where.values()):
        return None
    return {n: s.get("nodeName") for n, s in where.items()}


def _power_off(dev: devcluster.DevCluster, node: str) -> str | None:
    for c in ((vmops.get(dev, "node", node) or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == rebalancepolicies.NODE_POWER_OFF:
            return str(c.get("status"))
    return None
