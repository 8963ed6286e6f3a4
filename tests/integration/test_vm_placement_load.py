"""Placement under a burst: many VMs created at once never double-book a node, and a
restarted controller counts what the previous one placed.

Two fake node Leases (no agent) whose memory fits exactly 30 VMs; 40 VMs are created
concurrently. Placement reserves capacity in the controller's ledger before the status
write, so exactly 30 are placed and 10 report Unschedulable, whatever the interleaving.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from kubevisor.api import groups, nodes
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

NS = "vmload-test"
LEASE_NS = nodes.LEASE_NAMESPACE
G, V = groups.GROUP, groups.VERSION
Mi = 2**20
VM_MEMORY = 128 * Mi
PER_NODE = 15
NODES = ("load-x", "load-y")
SELECTOR = {"pool": "vmload"}
"""Only this test's Leases carry it, so Leases other tests leave behind don't matter."""
TEMPLATE = {"cpu": {"cores": 1}, "memory": "128Mi", "nodeSelector": SELECTOR}


def _lease(name: str) -> dict[str, Any]:
    capacity = {"cpu": 1000, "memoryBytes": PER_NODE * VM_MEMORY, "gpus": 0}
    return testing.fake_node_lease(name, labels=SELECTOR, capacity=capacity)


class Env:
    def __init__(self, cluster: Any, logdir: Path) -> None:
        import kubernetes

        self.k = kubernetes
        self.kubeconfig: Path = cluster.kubeconfig
        self.logdir = logdir
        self.custom = kubernetes.client.CustomObjectsApi(cluster.api)
        self.core = kubernetes.client.CoreV1Api(cluster.api)
        self.coord = kubernetes.client.CoordinationV1Api(cluster.api)

    def create_vm(self, name: str) -> None:
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {"templateRef": {"name": "load"}},
        }
        self.custom.create_namespaced_custom_object(G, V, NS, "virtualmachines", body)

    def vms(self) -> list[dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(G, V, NS, "virtualmachines")["items"]
        return list(items)


def _scheduled(vm: dict[str, Any]) -> dict[str, Any]:
    for c in (vm.get("status") or {}).get("conditions") or []:
        if c["type"] == "Scheduled":
            return dict(c)
    return {}


def _decided(env: Env, count: int) -> list[dict[str, Any]] | None:
    """All ``count`` VMs, once each is placed or says it is Unschedulable."""
    vms = env.vms()
    done = [vm for vm in vms if _scheduled(vm).get("reason") in ("Scheduled", "Unschedulable")]
    return vms if len(vms) == count and len(done) == count else None


def _placed(vms: list[dict[str, Any]]) -> Counter[str]:
    return Counter(str(vm["status"]["nodeName"]) for vm in vms if vm["status"].get("nodeName"))


@pytest.fixture(scope="module")
def env(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(cluster, tmp_path_factory.mktemp("vmload"))
    for ns in (NS, LEASE_NS):
        testing.ensure_namespace(e.core, ns)
    for name in NODES:
        e.coord.create_namespaced_lease(LEASE_NS, _lease(name))
    body = {
        "apiVersion": groups.API_VERSION,
        "kind": "VMTemplate",
        "metadata": {"name": "load"},
        "spec": TEMPLATE,
    }
    e.custom.create_namespaced_custom_object(G, V, NS, "vmtemplates", body)
    try:
        yield e
    finally:
        for vm in e.vms():
            name = vm["metadata"]["name"]
            e.custom.patch_namespaced_custom_object(
                G, V, NS, "virtualmachines", name, {"metadata": {"finalizers": None}}
            )
            e.custom.delete_namespaced_custom_object(G, V, NS, "virtualmachines", name)
        for name in NODES:
            e.coord.delete_namespaced_lease(name, LEASE_NS)


def test_burst_fills_capacity_exactly_and_restart_does_not_double_book(env: Env) -> None:
    names = [f"burst-{i:02d}" for i in range(40)]
    with testing.running_controller(
        env.kubeconfig, log=env.logdir / "controller-1.log", namespaces=[NS]
    ):
        with ThreadPoolExecutor(max_workers=10) as pool:
            list(pool.map(env.create_vm, names))
        vms = testing.wait_for(
            lambda: _decided(env, 40),
            timeout=120,
            what="all 40 VMs placed or Unschedulable",
            show=lambda: Counter(_scheduled(vm).get("reason") for vm in env.vms()),
        )
        placed = _placed(vms)
        assert sum(placed.values()) == 30, placed
        assert placed == {"load-x": PER_NODE, "load-y": PER_NODE}
        refused = [_scheduled(vm) for vm in vms if not vm["status"].get("nodeName")]
        assert len(refused) == 10
        for cond in refused:
            assert cond["status"] == "False"
            assert "load-x: not enough memory (need 128Mi, free 0)" in cond["message"]
            assert "load-y: not enough memory (need 128Mi, free 0)" in cond["message"]

    # A new controller process: its ledger is primed from the list, so neither the 10
    # waiting VMs nor new ones find room on the full nodes.
    later = [f"later-{i}" for i in range(5)]
    with testing.running_controller(
        env.kubeconfig, log=env.logdir / "controller-2.log", namespaces=[NS]
    ):
        for name in later:
            env.create_vm(name)
        vms = testing.wait_for(
            lambda: _decided(env, 45),
            timeout=120,
            what="the 5 later VMs reconciled",
            show=lambda: Counter(_scheduled(vm).get("reason") for vm in env.vms()),
        )
        assert _placed(vms) == {"load-x": PER_NODE, "load-y": PER_NODE}
        # Freeing capacity (stopping one placed VM) lets exactly one waiting VM in.
        victim = next(vm for vm in vms if vm["status"].get("nodeName"))
        env.custom.patch_namespaced_custom_object(
            G,
            V,
            NS,
            "virtualmachines",
            victim["metadata"]["name"],
            {"spec": {"runStrategy": "Halted"}},
        )
        testing.wait_for(
            lambda: sum(_placed(env.vms()).values()) == 31,
            timeout=60,
            what="one waiting VM placed in the freed capacity",
            show=lambda: _placed(env.vms()),
        )
        running = [
            vm
            for vm in env.vms()
            if vm["status"].get("nodeName") and vm["status"].get("desiredState") != "Stopped"
        ]
        assert Counter(vm["status"]["nodeName"] for vm in running) == {
            "load-x": PER_NODE,
            "load-y": PER_NODE,
        }
