"""Cordon and drain against a real API server and controller. Nodes are fake: Leases and
core/v1 Node objects this test writes, no agent; the agents' VM status is written by the
test (field manager kubevisor-agent). The Migration reconciler runs too, but these fake
Leases report no migrationURI or RTTs, so the drain's Migrations stay Pending with a
Scheduled=False reason (tests/integration/test_migration_controller.py moves VMs)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kubevisor.api import groups
from kubevisor.devenv import fakenodes, testing

pytestmark = pytest.mark.integration

NS = "drain-test"
G, V = groups.GROUP, groups.VERSION
CAP = {"cpu": 16, "memoryBytes": 8 * 2**30, "gpus": 0}
NODES = {"drain-a": {"zone": "da"}, "drain-b": {"zone": "db"}}
MACHINE = {
    "cpu": {"cores": 1},
    "memory": "64Mi",
    "disks": [{"name": "root", "image": "tiny", "size": "1Gi"}],
    "nics": [{"name": "eth0", "network": "default"}],
}


class Env(fakenodes.FakeNodes):
    def drain_migrations(self, node: str) -> list[str]:
        items = self.custom.list_namespaced_custom_object(
            G, V, NS, "migrations", label_selector=f"{groups.LABEL_DRAIN_NODE}={node}"
        )["items"]
        return sorted(m["metadata"]["name"] for m in items)


@pytest.fixture(scope="module")
def env(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(cluster, ns=NS, machine=MACHINE)
    for name, labels in NODES.items():
        e.add(name, capacity=CAP, labels=labels)
    logfile = tmp_path_factory.mktemp("drain") / "controller.log"
    try:
        with testing.running_controller(cluster.kubeconfig, log=logfile, namespaces=[NS]):
            yield e
    finally:
        e.delete_all("migrations", "virtualmachines")
        e.remove_nodes()


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
