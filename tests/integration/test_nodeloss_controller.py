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

from kubevisor.api import conditions, groups, nodeloss, rebalancepolicies
from kubevisor.devenv import fakenodes, testing

pytestmark = pytest.mark.integration

NS = "nodeloss-test"
LOST, SPARE = "nl-lost", "nl-spare"
OFF, OFF_EMPTY = "nl-off", "nl-off-empty"
"""Nodes consolidation powered off (added by their tests)."""
#: The spare node takes two of the three 512 MiB shared-disk VMs.
CAPS = {LOST: 8 * 2**30, SPARE: 1 * 2**30}
SHARED_DISKS = [{"name": "root", "image": "tiny", "size": "1Gi", "storage": "shared"}]
LOCAL_DISKS = [{"name": "root", "image": "tiny", "size": "1Gi", "storage": "local"}]
MACHINE = {"cpu": {"cores": 1}, "memory": "512Mi", "disks": SHARED_DISKS}


class Env(fakenodes.FakeNodes):
    def reason(self, name: str) -> str | None:
        return self.cond(name, "NodeLost").get("reason")


@pytest.fixture(scope="module")
def env(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(cluster, ns=NS, machine=MACHINE)
    for name, memory in CAPS.items():
        e.add(name, capacity={"cpu": 16, "memoryBytes": memory, "gpus": 0})
    logfile = tmp_path_factory.mktemp("nodeloss") / "controller.log"
    try:
        with testing.running_controller(cluster.kubeconfig, log=logfile, namespaces=[NS]):
            yield e
    finally:
        e.delete_all("virtualmachines")
        e.remove_nodes()


def test_lost_node_waits_for_the_fence_then_restarts_vms_by_priority(env: Env) -> None:
    # everything is placed on the node that will be lost (the spare is cordoned meanwhile)
    env.cordon(SPARE, True)
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
    env.cordon(SPARE, False)

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


def _mark_power_off(env: Env, node: str) -> None:
    """What the rebalancer writes on a node it emptied (Consolidate): the condition."""
    cond = {
        "type": rebalancepolicies.NODE_POWER_OFF,
        "status": "True",
        "reason": "Emptied",
        "message": "written by the test, as the rebalancer would",
        "lastTransitionTime": conditions.format_time(datetime.now(UTC)),
    }
    env.core.patch_node_status(node, {"status": {"conditions": [cond]}})


def test_a_node_powered_off_by_consolidation_is_not_a_lost_node(env: Env) -> None:
    """A node marked for power-off (with the most room of all, and not cordoned, as if
    someone undid the rebalancer's cordon) is never picked by placement; its Lease
    expiring makes nothing NodeLost (it holds no VM) and nothing fences it."""
    env.node(OFF_EMPTY)
    _mark_power_off(env, OFF_EMPTY)
    # the Lease after the mark: any placement that sees the node has seen the mark too
    env.lease(OFF_EMPTY, capacity={"cpu": 64, "memoryBytes": 256 * 2**30, "gpus": 0})
    env.vm("newcomer")
    testing.wait_for(lambda: env.status("newcomer").get("nodeName"), timeout=30,
                     what="newcomer placed", show=lambda: env.status("newcomer"))  # fmt: skip
    assert env.status("newcomer")["nodeName"] != OFF_EMPTY

    env.renewed(OFF_EMPTY, datetime.now(UTC) - timedelta(hours=2))
    # a pass that has seen the expired Lease: a VM created now is refused there as lost
    env.vm("after")
    testing.wait_for(lambda: env.status("after").get("nodeName"), timeout=30,
                     what="after placed", show=lambda: env.status("after"))  # fmt: skip
    for vm in env.custom.list_namespaced_custom_object(
        groups.GROUP, groups.VERSION, NS, "virtualmachines"
    )["items"]:
        assert OFF_EMPTY not in str(env.cond(vm["metadata"]["name"], "NodeLost"))
        assert (vm.get("status") or {}).get("nodeName") != OFF_EMPTY
    taints = env.core.read_node(OFF_EMPTY).spec.taints or []
    assert not any(t.key == nodeloss.TAINT_OUT_OF_SERVICE for t in taints)


def test_a_vm_that_raced_onto_a_powered_off_node_waits_for_the_fence(env: Env) -> None:
    """The race: a VM placed on a node between the rebalancer's look and its mark. When
    the node's Lease expires, the VM waits for the fence like on any lost node (being
    marked is not proof that the node is off), and the sentence says why the node is
    off; it is not restarted elsewhere, and is no longer lost once the woken node's agent
    renews its Lease (the rebalancer wakes a powered-off node holding a VM first)."""
    pin = {"nodeloss-test/pin": OFF}  # pinned: a stale look at cordons cannot misplace it
    env.add(OFF, capacity={"cpu": 16, "memoryBytes": 8 * 2**30, "gpus": 0}, labels=pin)
    env.vm("raced", nodeSelector=pin)
    testing.wait_for(lambda: env.status("raced").get("nodeName") == OFF, timeout=30,
                     what=f"raced placed on {OFF}", show=lambda: env.status("raced"))  # fmt: skip
    env.running("raced")
    _mark_power_off(env, OFF)
    env.renewed(OFF, datetime.now(UTC) - timedelta(hours=2))
    testing.wait_for(lambda: env.reason("raced") == "AwaitingFence", timeout=30,
                     what="raced AwaitingFence", show=lambda: env.status("raced"))  # fmt: skip
    message = env.cond("raced", "NodeLost")["message"]
    assert "consolidation marked it for power-off while it held this VM" in message
    assert env.status("raced")["nodeName"] == OFF and "recovery" not in env.status("raced")

    env.renewed(OFF, datetime.now(UTC))  # woken: its agent renews again
    testing.wait_for(lambda: env.reason("raced") is None, timeout=30,
                     what="raced no longer lost", show=lambda: env.status("raced"))  # fmt: skip
    assert env.status("raced")["nodeName"] == OFF
