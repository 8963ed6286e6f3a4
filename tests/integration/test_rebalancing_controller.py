"""RebalancePolicy against a real API server and controller. Nodes are fake: Leases and
core/v1 Node objects this test writes, no agents; the agents' VM phase is written by the
test (field manager kubevisor-agent). So the rebalancer's Migrations are created and
admitted but never run (no agent prepares a target): the test checks what the rebalancer
writes (Migrations, Node marks, Events, its status), not a move (tests/e2e/test_rebalancing.py
moves real guests). The CRD's own validation (name, CEL) is checked first."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kubevisor.api import groups, rebalancepolicies
from kubevisor.devenv import fakenodes, testing

pytestmark = pytest.mark.integration

NS = "rebalance-test"
G, V = groups.GROUP, groups.VERSION
PLURAL = "rebalancepolicies"
CAP = {
    "cpu": 16,
    "memoryBytes": 8 * 2**30,
    "gpus": 0,
    "sharedStorage": "/srv/shared",
}
NODES = ("rb-a", "rb-b", "rb-c", "rb-d", "rb-e")
MACHINE = {
    "cpu": {"cores": 1},
    "memory": "1Gi",
    "disks": [{"name": "root", "image": "tiny", "size": "1Gi", "storage": "shared"}],
    "nics": [{"name": "eth0", "network": "default"}],
}


class Env(fakenodes.FakeNodes):
    def lease_with_uri(self, name: str) -> None:
        self.lease(name, capacity={**CAP, "migrationURI": f"qemu+tcp://{name}/system"})

    def policy(self, spec: dict[str, Any], name: str = rebalancepolicies.NAME) -> None:
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": "RebalancePolicy",
            "metadata": {"name": name},
            "spec": spec,
        }
        try:
            self.custom.delete_cluster_custom_object(G, V, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
        testing.wait_for(lambda: self._gone(name), timeout=10, what="old policy gone")
        self.custom.create_cluster_custom_object(G, V, PLURAL, body)

    def _gone(self, name: str) -> bool:
        try:
            self.custom.get_cluster_custom_object(G, V, PLURAL, name)
        except ApiException as exc:
            return exc.status == 404
        return False

    def policy_status(self) -> dict[str, Any]:
        obj = self.custom.get_cluster_custom_object(G, V, PLURAL, rebalancepolicies.NAME)
        return dict(obj.get("status") or {})

    def ours(self) -> list[dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(
            G, V, NS, "migrations", label_selector=rebalancepolicies.LABEL_REBALANCE
        )["items"]
        return list(items)

    def node_condition(self, name: str) -> dict[str, Any]:
        node = self.core.read_node(name)
        for c in node.status.conditions or []:
            if c.type == rebalancepolicies.NODE_POWER_OFF:
                return {"status": c.status, "reason": c.reason, "message": c.message}
        return {}


@pytest.fixture(scope="module")
def env(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(cluster, ns=NS, machine=MACHINE)
    for name in NODES:
        e.node(name)
    logfile = tmp_path_factory.mktemp("rebalance") / "controller.log"
    # the fake Leases carry no RTTs: let targets pass without a measurement (the
    # controller subprocess inherits the environment)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("KUBEVISOR_MIGRATION_REQUIRE_RTT", "false")
            with testing.running_controller(cluster.kubeconfig, log=logfile, namespaces=[NS]):
                yield e
    finally:
        try:
            e.custom.delete_cluster_custom_object(G, V, PLURAL, rebalancepolicies.NAME)
        except ApiException:
            pass
        e.delete_all("migrations", "virtualmachines")
        e.remove_nodes()


@pytest.mark.parametrize(
    ("name", "spec", "says"),
    [
        ("other", {}, "named cluster"),
        ("cluster", {"mode": "Sideways"}, "Unsupported value"),
        (
            "cluster",
            {"consolidate": {"targetUtilizationPercent": 90, "wakeUtilizationPercent": 80}},
            "wakeUtilizationPercent must not be below targetUtilizationPercent",
        ),
        ("cluster", {"maxMovesPerPass": 0}, "maxMovesPerPass"),
        ("cluster", {"intervalSeconds": 1}, "intervalSeconds"),
    ],
)
def test_the_api_server_refuses_a_bad_policy(
    env: Env, name: str, spec: dict[str, Any], says: str
) -> None:
    body = {
        "apiVersion": groups.API_VERSION,
        "kind": "RebalancePolicy",
        "metadata": {"name": name},
        "spec": spec,
    }
    with pytest.raises(ApiException) as err:
        env.custom.create_cluster_custom_object(G, V, PLURAL, body)
    assert err.value.status == 422
    assert says in str(err.value.body)


def test_balance_moves_vms_off_the_loaded_node_through_migrations(env: Env) -> None:
    env.lease_with_uri("rb-a")  # only rb-a exists: all three VMs are placed there
    for i in range(3):
        env.vm(f"bal-{i}")
    env.vm("pinned", rebalance="Never")
    for name in ("bal-0", "bal-1", "bal-2", "pinned"):
        testing.wait_for(
            lambda n=name: env.status(n).get("nodeName") == "rb-a", timeout=30, what=name
        )
        env.running(name)
    env.lease_with_uri("rb-b")
    env.lease_with_uri("rb-c")
    env.policy({"mode": "Balance", "intervalSeconds": 5, "maxMovesPerPass": 5})
    migs = testing.wait_for(
        lambda: env.ours() if len(env.ours()) >= 2 else None,
        timeout=60,
        what="two Balance Migrations",
        show=env.policy_status,
    )
    targets = sorted(m["spec"]["targetNode"] for m in migs)
    assert targets == ["rb-b", "rb-c"]
    for m in migs:
        vm = m["spec"]["vmName"]
        assert vm != "pinned"
        assert m["metadata"]["name"].startswith(f"{vm}-balance-")
        assert m["metadata"]["labels"][rebalancepolicies.LABEL_REBALANCE] == "Balance"
    status = testing.wait_for(
        lambda: env.policy_status() if env.policy_status().get("moves") else None,
        timeout=30,
        what="policy status",
    )
    assert {m["migration"] for m in status["moves"]} == {m["metadata"]["name"] for m in migs}
    assert status["phase"] == "Moving"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "Moving"
    # while they are unfinished, no new pass plans more
    assert len(env.ours()) == 2
    # cancelling is an ordinary Migration cancel
    for m in migs:
        name = m["metadata"]["name"]
        env.custom.patch_namespaced_custom_object(
            G, V, NS, "migrations", name, {"spec": {"cancel": True}}
        )
        testing.wait_for(
            lambda n=name: (
                env.custom.get_namespaced_custom_object(G, V, NS, "migrations", n)
                .get("status", {})
                .get("phase")
                == "Cancelled"
            ),
            timeout=30,
            what=f"{name} Cancelled",
        )


def test_consolidate_marks_an_empty_node_and_wakes_it(env: Env) -> None:
    env.policy({"mode": "Off"})
    for node in ("rb-b", "rb-c"):  # the Balance test's targets leave; two empty nodes join
        env.coord.delete_namespaced_lease(node, fakenodes.LEASE_NS)
    env.lease_with_uri("rb-d")
    env.lease_with_uri("rb-e")
    env.delete_all("migrations")  # the Balance test's Migrations: out of the way
    # Consolidate with nothing to pack (rb-a holds a pinned VM): rb-d and rb-e are empty
    # and rb-a alone stays within the 60 % target (4 of 8 GiB), so both are marked
    env.policy(
        {
            "mode": "Consolidate",
            "intervalSeconds": 5,
            "maxMovesPerPass": 1,
            "consolidate": {"targetUtilizationPercent": 60, "wakeUtilizationPercent": 90},
        }
    )
    for node in ("rb-d", "rb-e"):
        cond = testing.wait_for(
            lambda n=node: env.node_condition(n) or None,
            timeout=60,
            what=f"{node} marked",
            show=env.policy_status,
        )
        assert cond["status"] == "True" and cond["reason"] == "Emptied"
        assert env.core.read_node(node).spec.unschedulable is True
        assert env.events(node, "PowerOff", ns="default")
    status = env.policy_status()
    assert status["poweredOffNodes"] == ["rb-d", "rb-e"]
    # load rises on rb-a: 4 GiB more, 8 of 8 GiB = 100 % > 90 %: a node is woken
    for i in range(4):
        env.vm(f"load-{i}")
    woken = testing.wait_for(
        lambda: [n for n in ("rb-d", "rb-e") if env.node_condition(n).get("status") == "False"],
        timeout=60,
        what="a node woken",
        show=env.policy_status,
    )
    for node in woken:
        assert env.node_condition(node)["reason"] == "Woken"
        assert not env.core.read_node(node).spec.unschedulable
        assert env.events(node, "PowerOn", ns="default")
