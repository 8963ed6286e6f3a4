"""The VRF controller against a real API server: conflicts refused with a reason and an
Event (the later VRF loses), tables allocated, readyNodes summarised from the agents'
per-node entries, and the agents' merge patches coexisting with the controller's
server-side apply. Nodes are fake Leases; agents are played by this test's patches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kubevisor.api import groups
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

NS = "vrfctl-test"
LEASE_NS = "kubevisor-system"
G, V = groups.GROUP, groups.VERSION
SELECT = {"vrfctl": "yes"}  # leases of other tests in the session never match
NODES = {"vrfctl-a": {"zone": "a"}, "vrfctl-b": {"zone": "b"}}


def _wait(predicate: Callable[[], Any], *, timeout: float = 30, what: str) -> Any:
    return testing.wait_for(predicate, timeout=timeout, what=what)


class Env:
    def __init__(self, cluster: Any) -> None:
        import kubernetes

        self.k = kubernetes
        self.custom = kubernetes.client.CustomObjectsApi(cluster.api)
        self.core = kubernetes.client.CoreV1Api(cluster.api)
        self.coord = kubernetes.client.CoordinationV1Api(cluster.api)

    def create(self, name: str, spec: dict[str, Any]) -> None:
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": "VRF",
            "metadata": {"name": name},
            "spec": {"nodeSelector": SELECT, **spec},
        }
        self.custom.create_namespaced_custom_object(G, V, NS, "vrfs", body)

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(G, V, NS, "vrfs", name)

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(G, V, NS, "vrfs", name)
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def ready(self, name: str) -> dict[str, Any]:
        for c in self.status(name).get("conditions") or []:
            if c["type"] == "Ready":
                return dict(c)
        return {}

    def agent_entry(self, name: str, node: str, entry: dict[str, Any] | None) -> None:
        """What a node's agent writes: a merge patch of its own key, its own manager."""
        self.custom.patch_namespaced_custom_object_status(
            G,
            V,
            NS,
            "vrfs",
            name,
            {"status": {"nodes": {node: entry}}},
            field_manager=f"kubevisor-agent-{node}",
            _content_type="application/merge-patch+json",
        )

    def events(self, name: str, reason: str) -> list[str]:
        items = self.core.list_namespaced_event(
            NS, field_selector=f"involvedObject.name={name}"
        ).items
        return [e.message for e in items if e.reason == reason]

    def lease(self, name: str, labels: dict[str, str]) -> None:
        self.coord.create_namespaced_lease(
            LEASE_NS, testing.fake_node_lease(name, labels={**labels, **SELECT})
        )


@pytest.fixture(scope="module")
def env(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(cluster)
    for ns in (NS, LEASE_NS):
        testing.ensure_namespace(e.core, ns)
    for name, labels in NODES.items():
        e.lease(name, labels)
    logfile = tmp_path_factory.mktemp("vrfctl") / "controller.log"
    with testing.running_controller(cluster.kubeconfig, log=logfile, namespaces=[NS]):
        try:
            yield e
        finally:
            for vrf in e.custom.list_namespaced_custom_object(G, V, NS, "vrfs")["items"]:
                e.delete(vrf["metadata"]["name"])
            for name in NODES:
                try:
                    e.coord.delete_namespaced_lease(name, LEASE_NS)
                except e.k.client.ApiException as exc:
                    if exc.status != 404:
                        raise


def _seg(name: str, network: str) -> dict[str, Any]:
    return {"name": name, "network": network, "addresses": ["10.0.0.1/24"]}


def test_conflicts_refuse_the_later_vrf(env: Env) -> None:
    env.create("red", {"table": 100, "interfaces": [_seg("red0", "red")]})
    _wait(lambda: env.status("red").get("tableAllocated") == 100, what="red accepted")
    env.create("blue", {"table": 100, "interfaces": [_seg("blue0", "blue")]})
    env.create("green", {"table": 300, "interfaces": [_seg("green0", "red")]})

    blue = _wait(lambda: env.ready("blue").get("reason") == "TableConflict" and env.ready("blue"),
                 what="blue refused")  # fmt: skip
    assert blue["status"] == "False"
    assert "table 100 is already used by VRF vrfctl-test/red" in blue["message"]
    assert "vrfctl-a, vrfctl-b" in blue["message"]
    green = _wait(
        lambda: env.ready("green").get("reason") == "InterfaceConflict" and env.ready("green"),
        what="green refused",
    )
    assert "segment 'red' is already claimed by VRF vrfctl-test/red" in green["message"]
    assert env.status("blue")["phase"] == "Failed"
    assert "tableAllocated" not in env.status("blue")
    assert env.status("red")["phase"] == "Provisioning"  # nobody reported yet
    assert _wait(lambda: env.events("blue", "TableConflict"), what="TableConflict event")
    assert _wait(lambda: env.events("green", "InterfaceConflict"), what="event")

    # the winner goes away: the refused ones are accepted on the next pass
    env.delete("red")
    _wait(lambda: env.status("blue").get("tableAllocated") == 100, what="blue accepted")
    _wait(lambda: env.status("green").get("tableAllocated") == 300, what="green accepted")
    env.delete("blue")
    env.delete("green")


def test_table_allocation_ready_nodes_and_coexisting_writers(env: Env) -> None:
    env.create("alloc", {"interfaces": [_seg("a0", "alloc")]})
    st = _wait(lambda: env.status("alloc").get("tableAllocated") and env.status("alloc"),
               what="table")  # fmt: skip
    table = st["tableAllocated"]
    assert 1000 <= table <= 1999
    assert st["readyNodes"] == "0/2" and st["phase"] == "Provisioning"
    env.create("alloc2", {"interfaces": [_seg("b0", "alloc2")]})
    other = _wait(lambda: env.status("alloc2").get("tableAllocated"), what="second table")
    assert other != table

    entry = {
        "backend": "netns",
        "table": table,
        "interfaces": ["a0"],
        "routesInstalled": 0,
        "ready": True,
        "message": "realized",
        "observedGeneration": 1,
        "lastSyncTime": "2025-01-01T00:00:00Z",
    }
    env.agent_entry("alloc", "vrfctl-a", entry)
    _wait(lambda: env.status("alloc").get("readyNodes") == "1/2", what="1/2")
    env.agent_entry(
        "alloc",
        "vrfctl-b",
        {
            **entry,
            "ready": False,
            "reason": "BackendUnavailable",
            "message": "802.1Q not available.",
        },
    )
    ready = _wait(
        lambda: env.ready("alloc").get("reason") == "BackendUnavailable" and env.ready("alloc"),
        what="degraded",
    )
    assert "vrfctl-b: 802.1Q not available." in ready["message"]
    assert env.status("alloc")["phase"] == "Degraded"
    env.agent_entry("alloc", "vrfctl-b", entry)
    _wait(lambda: env.status("alloc").get("phase") == "Ready", what="Ready")
    st = env.status("alloc")
    assert st["readyNodes"] == "2/2" and set(st["nodes"]) == {"vrfctl-a", "vrfctl-b"}

    # a lost node: the controller re-applies its fields; the agents' entries stay
    env.coord.delete_namespaced_lease("vrfctl-b", LEASE_NS)
    _wait(lambda: env.status("alloc").get("readyNodes") == "1/1", what="1/1")
    st = env.status("alloc")
    assert set(st["nodes"]) == {"vrfctl-a", "vrfctl-b"}
    assert st["tableAllocated"] == table and st["phase"] == "Ready"
    managers = {m["manager"]: m for m in env.get("alloc")["metadata"]["managedFields"]}
    controller = str(managers["kubevisor-controller"]["fieldsV1"])
    assert "f:readyNodes" in controller and "f:nodes" not in controller
    # an agent removing its entry leaves the controller's fields alone
    env.agent_entry("alloc", "vrfctl-b", None)
    st = _wait(lambda: set(env.status("alloc").get("nodes", {})) == {"vrfctl-a"}
               and env.status("alloc"), what="entry removed")  # fmt: skip
    assert st["tableAllocated"] == table and st["readyNodes"] == "1/1"
    env.lease("vrfctl-b", NODES["vrfctl-b"])
    _wait(lambda: env.status("alloc").get("readyNodes") == "1/2", what="1/2 again")


def test_a_daemon_killed_over_its_memory_limit_degrades_only_its_vrf(env: Env) -> None:
    """Issue 18: the agent's DaemonOutOfMemory (its daemon killed in the VRF's cgroup,
    `supervising`) becomes the VRF's Ready reason with the node's sentence and a Warning
    Event; another VRF on the same nodes stays Ready."""
    env.create("oom", {"interfaces": [_seg("o0", "oom")]})
    env.create("calm", {"interfaces": [_seg("c0", "calm")]})
    tables = {
        name: _wait(lambda n=name: env.status(n).get("tableAllocated"), what=f"{name} table")
        for name in ("oom", "calm")
    }

    def entry(name: str, iface: str, **extra: Any) -> dict[str, Any]:
        return {
            "backend": "netns",
            "table": tables[name],
            "interfaces": [iface],
            "routesInstalled": 0,
            "ready": True,
            "message": "realized",
            "observedGeneration": 1,
            "lastSyncTime": "2025-01-01T00:00:00Z",
            **extra,
        }

    said = (
        "bird was killed by the kernel for going over the VRF's memory limit"
        " (resources.memory) (killed by signal 9); restart 2 in 2 s."
    )
    for node in NODES:
        env.agent_entry("calm", node, entry("calm", "c0"))
    env.agent_entry("oom", "vrfctl-a", entry("oom", "o0"))
    env.agent_entry(
        "oom", "vrfctl-b", entry("oom", "o0", ready=False, reason="DaemonOutOfMemory", message=said)
    )
    try:
        ready = _wait(
            lambda: env.ready("oom").get("reason") == "DaemonOutOfMemory" and env.ready("oom"),
            what="DaemonOutOfMemory on oom",
        )
        assert ready["status"] == "False" and f"vrfctl-b: {said}" in ready["message"]
        assert env.status("oom")["phase"] == "Degraded"
        events = _wait(lambda: env.events("oom", "DaemonOutOfMemory"), what="Warning event")
        assert any(said in message for message in events)
        calm = _wait(lambda: env.status("calm").get("phase") == "Ready" and env.status("calm"),
                     what="calm Ready")  # fmt: skip
        assert calm["readyNodes"] == "2/2"
        assert not env.events("calm", "DaemonOutOfMemory")
    finally:
        for name in ("oom", "calm"):
            env.delete(name)
        for name in ("oom", "calm"):
            _wait(lambda n=name: n not in _names(env), what=f"{name} deleted")


def _names(env: Env) -> set[str]:
    items = env.custom.list_namespaced_custom_object(G, V, NS, "vrfs")["items"]
    return {item["metadata"]["name"] for item in items}
