"""Cordon and drain against a real API server and controller. Nodes are fake: Leases and
core/v1 Node objects this test writes, no agent; the agents' VM status is written by the
test (field manager kubevisor-agent). The Migration reconciler runs too, but these fake
Leases report no migrationURI or RTTs, so the drain's Migrations stay Pending with a
Scheduled=False reason (tests/integration/test_migration_controller.py moves VMs)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kubevisor.api import groups, nodes
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

NS = "drain-test"
LEASE_NS = nodes.LEASE_NAMESPACE
G, V = groups.GROUP, groups.VERSION
CAP = {"cpu": 16, "memoryBytes": 8 * 2**30, "gpus": 0}
NODES = {"drain-a": {"zone": "da"}, "drain-b": {"zone": "db"}}
MACHINE = {
    "cpu": {"cores": 1},
    "memory": "64Mi",
    "disks": [{"name": "root", "image": "tiny", "size": "1Gi"}],
    "nics": [{"name": "eth0", "network": "default"}],
}


class Env:
    def __init__(self, cluster: Any) -> None:
        import kubernetes

        self.custom = kubernetes.client.CustomObjectsApi(cluster.api)
        self.core = kubernetes.client.CoreV1Api(cluster.api)
        self.coord = kubernetes.client.CoordinationV1Api(cluster.api)

    def vm(self, name: str, **spec: Any) -> None:
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {**MACHINE, **spec},
        }
        self.custom.create_namespaced_custom_object(G, V, NS, "virtualmachines", body)

    def status(self, name: str) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object(G, V, NS, "virtualmachines", name)
        return dict(obj.get("status") or {})

    def cond(self, name: str, type_: str) -> dict[str, Any]:
        return next(
            (dict(c) for c in self.status(name).get("conditions") or [] if c["type"] == type_), {}
        )

    def running(self, name: str) -> None:
        """What the node's agent would report (its own field manager)."""
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": NS},
            "status": {"phase": "Running"},
        }
        self.custom.patch_namespaced_custom_object_status(
            G,
            V,
            NS,
            "virtualmachines",
            name,
            body,
            field_manager="kubevisor-agent",
            force=True,
            _content_type="application/apply-patch+yaml",
        )

    def cordon(self, node: str, on: bool) -> None:
        self.core.patch_node(node, {"spec": {"unschedulable": on}})

    def drain_migrations(self, node: str) -> list[str]:
        items = self.custom.list_namespaced_custom_object(
            G, V, NS, "migrations", label_selector=f"{groups.LABEL_DRAIN_NODE}={node}"
        )["items"]
        return sorted(m["metadata"]["name"] for m in items)


@pytest.fixture(scope="module")
def env(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(cluster)
    for ns in (NS, LEASE_NS):
        testing.ensure_namespace(e.core, ns)
    for name, labels in NODES.items():
        e.coord.create_namespaced_lease(
            LEASE_NS, testing.fake_node_lease(name, labels=labels, capacity=CAP)
        )
        e.core.create_node({"metadata": {"name": name, "labels": labels}})
    logfile = tmp_path_factory.mktemp("drain") / "controller.log"
    with testing.running_controller(cluster.kubeconfig, log=logfile, namespaces=[NS]):
        try:
            yield e
        finally:
            for vm in e.custom.list_namespaced_custom_object(G, V, NS, "virtualmachines")["items"]:
                name = vm["metadata"]["name"]
                e.custom.patch_namespaced_custom_object(
                    G, V, NS, "virtualmachines", name, {"metadata": {"finalizers": None}}
                )
                e.custom.delete_namespaced_custom_object(G, V, NS, "virtualmachines", name)
            for name in NODES:
                e.coord.delete_namespaced_lease(name, LEASE_NS)
                e.core.delete_node(name)


def test_cordon_keeps_new_vms_off_and_says_so(env: Env) -> None:
    env.cordon("drain-a", True)
    try:
        env.vm("off-a", nodeSelector={"zone": "da"})
        cond = testing.wait_for(
            lambda: (
                env.cond("off-a", "Scheduled").get("reason") == "Unschedulable"
                and env.cond("off-a", "Scheduled")
            ),
            timeout=30,
            what="Unschedulable on a cordoned node",
        )
        assert "drain-a: cordoned" in cond["message"]
        assert "drain-b: does not match nodeSelector zone=da (its labels:" in cond["message"]
    finally:
        env.cordon("drain-a", False)
    testing.wait_for(
        lambda: env.status("off-a").get("nodeName") == "drain-a", timeout=30, what="uncordon"
    )


def test_drain_creates_one_migration_per_live_migrate_vm(env: Env) -> None:
    names = ["lm-1", "lm-2", "lm-3"]
    for n in names:
        env.vm(n, nodeSelector={"zone": "db"}, evictionStrategy="LiveMigrate")
    env.vm("stays", nodeSelector={"zone": "db"})
    for n in [*names, "stays"]:
        testing.wait_for(
            lambda n=n: env.status(n).get("nodeName") == "drain-b", timeout=30, what=f"{n} placed"
        )
        env.running(n)
    env.cordon("drain-b", True)
    try:
        stays = testing.wait_for(
            lambda: (
                env.cond("stays", "Evictable").get("status") == "False"
                and env.cond("stays", "Evictable")
            ),
            timeout=30,
            what="Evictable=False on the None VM",
        )
        assert stays["reason"] == "EvictionStrategyNone" and "drain-b" in stays["message"]
        expected = [f"{n}-drain-drain-b" for n in names]
        testing.wait_for(
            lambda: env.drain_migrations("drain-b") == expected, timeout=30, what="3 Migrations"
        )
        for n in names:
            assert env.cond(n, "Evictable")["reason"] == "Evicting"
        # The VM reconciler's own applies keep going and must not remove Evictable.
        assert env.cond("stays", "Scheduled")["status"] == "True"
        assert env.drain_migrations("drain-b") == expected
    finally:
        env.cordon("drain-b", False)
