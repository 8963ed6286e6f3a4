"""Node loss against a real API server and controller (docs/node-loss.md). Nodes are
fake: Leases and core/v1 Node objects this test writes, no agent; the agents' VM status
is written by the test (field manager kubevisor-agent). Expiring a Lease is the test
rewriting its renewTime into the past; fencing is the out-of-service taint on the Node.
The real thing (agents, QEMU, the fence step) is tests/e2e/test_node_loss.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubevisor.api import groups, nodeloss, nodes
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

NS = "nodeloss-test"
LEASE_NS = nodes.LEASE_NAMESPACE
G, V = groups.GROUP, groups.VERSION
LOST, SPARE = "nl-lost", "nl-spare"
#: The spare node takes two of the three 512 MiB shared-disk VMs.
CAPS = {LOST: 8 * 2**30, SPARE: 1 * 2**30}
SHARED_DISKS = [{"name": "root", "image": "tiny", "size": "1Gi", "storage": "shared"}]
LOCAL_DISKS = [{"name": "root", "image": "tiny", "size": "1Gi", "storage": "local"}]


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
            "spec": {"cpu": {"cores": 1}, "memory": "512Mi", "disks": SHARED_DISKS, **spec},
        }
        self.custom.create_namespaced_custom_object(G, V, NS, "virtualmachines", body)

    def obj(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(G, V, NS, "virtualmachines", name))

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.obj(name).get("status") or {})

    def cond(self, name: str, type_: str) -> dict[str, Any]:
        return next(
            (dict(c) for c in self.status(name).get("conditions") or [] if c["type"] == type_), {}
        )

    def reason(self, name: str) -> str | None:
        return self.cond(name, "NodeLost").get("reason")

    def running(self, name: str) -> None:
        """What the node's agent would report (its own field manager)."""
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": NS},
            "status": {"phase": "Running"},
        }
        self.custom.patch_namespaced_custom_object_status(
            G, V, NS, "virtualmachines", name, body, field_manager="kubevisor-agent",
            force=True, _content_type="application/apply-patch+yaml",
        )  # fmt: skip

    def renewed(self, node: str, at: datetime) -> None:
        self.coord.patch_namespaced_lease(
            node, LEASE_NS, {"spec": {"renewTime": nodes.micro_time(at)}}
        )

    def events(self, name: str, reason: str) -> list[Any]:
        return list(
            self.core.list_namespaced_event(
                NS, field_selector=f"involvedObject.name={name},reason={reason}"
            ).items
        )


@pytest.fixture(scope="module")
def env(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(cluster)
    for ns in (NS, LEASE_NS):
        testing.ensure_namespace(e.core, ns)
    for name, memory in CAPS.items():
        e.coord.create_namespaced_lease(
            LEASE_NS,
            testing.fake_node_lease(name, capacity={"cpu": 16, "memoryBytes": memory, "gpus": 0}),
        )
        e.core.create_node({"metadata": {"name": name}})
    logfile = tmp_path_factory.mktemp("nodeloss") / "controller.log"
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
            for name in CAPS:
                e.coord.delete_namespaced_lease(name, LEASE_NS)
                e.core.delete_node(name)


def test_lost_node_waits_for_the_fence_then_restarts_vms_by_priority(env: Env) -> None:
    # everything is placed on the node that will be lost (the spare is cordoned meanwhile)
    env.core.patch_node(SPARE, {"spec": {"unschedulable": True}})
    env.vm("high", priority=5)
    env.vm("low", priority=1)
    env.vm("mid", priority=3)
    env.vm("local", disks=LOCAL_DISKS)
    env.vm("once", runStrategy="Once")
    names = ["high", "low", "mid", "local", "once"]
    for n in names:
        testing.wait_for(lambda n=n: env.status(n).get("nodeName") == LOST, timeout=30,
                         what=f"{n} placed on {LOST}")  # fmt: skip
        env.running(n)
    env.core.patch_node(SPARE, {"spec": {"unschedulable": False}})

    env.renewed(LOST, datetime.now(UTC) - timedelta(hours=2))
    for n in names:
        testing.wait_for(lambda n=n: env.reason(n) == "AwaitingFence", timeout=30,
                         what=f"{n} AwaitingFence", show=lambda n=n: env.status(n))  # fmt: skip
        cond = env.cond(n, "NodeLost")
        assert cond["status"] == "True"
        assert f"node {LOST} last renewed its Lease 7" in cond["message"]  # about 7200s ago
        assert "not started elsewhere until the node is fenced" in cond["message"]
        testing.wait_for(lambda n=n: env.events(n, "AwaitingFence"), timeout=30,
                         what=f"{n} Warning Event")  # fmt: skip
    # not fenced: nothing moved
    first = {n: env.cond(n, "NodeLost")["lastTransitionTime"] for n in names}
    assert all(env.status(n)["nodeName"] == LOST for n in names)
    assert all("recovery" not in env.status(n) for n in names)

    env.core.patch_node(LOST, {"spec": {"taints": [nodeloss.out_of_service_taint()]}})
    for n in ("high", "mid"):
        testing.wait_for(lambda n=n: env.status(n).get("nodeName") == SPARE, timeout=30,
                         what=f"{n} moved to {SPARE}", show=lambda n=n: env.status(n))  # fmt: skip
        st = env.status(n)
        assert st["recovery"] == {"fromNode": LOST, "toNode": SPARE}
        assert env.obj(n)["metadata"]["labels"][groups.LABEL_NODE] == SPARE
        testing.wait_for(lambda n=n: env.events(n, "Migrated"), timeout=30,
                         what=f"{n} Migrated Event")  # fmt: skip
        testing.wait_for(lambda n=n: env.reason(n) is None, timeout=30,
                         what=f"{n} NodeLost removed")  # fmt: skip
    # the lowest priority does not fit any more; the others say why they stay
    testing.wait_for(lambda: env.reason("low") == "Unschedulable", timeout=30,
                     what="low Unschedulable", show=lambda: env.status("low"))  # fmt: skip
    assert f"{SPARE}: not enough memory" in env.cond("low", "NodeLost")["message"]
    assert env.reason("local") == "NotRecoverable"
    assert "disk root is node-local" in env.cond("local", "NodeLost")["message"]
    assert env.reason("once") == "NotRestarted"
    for n in ("low", "local", "once"):
        assert env.status(n)["nodeName"] == LOST
        assert env.cond(n, "NodeLost")["lastTransitionTime"] == first[n]

    # the node comes back: the VMs still placed there are no longer lost
    env.renewed(LOST, datetime.now(UTC))
    for n in ("low", "local", "once"):
        testing.wait_for(lambda n=n: env.reason(n) is None, timeout=30,
                         what=f"{n} NodeLost removed", show=lambda n=n: env.status(n))  # fmt: skip
        testing.wait_for(lambda n=n: env.events(n, "NodeRecovered"), timeout=30,
                         what=f"{n} NodeRecovered Event")  # fmt: skip
        assert env.status(n)["nodeName"] == LOST
    assert env.status("high")["nodeName"] == SPARE  # moved VMs stay where they run now
