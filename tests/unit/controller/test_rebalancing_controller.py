"""The rebalancer's pure parts: what it sees (observing) and what it writes (planning)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubevisor.api import nodes, rebalancepolicies
from kubevisor.controller.placement import placing
from kubevisor.controller.placement import rebalancing as rb
from kubevisor.controller.rebalancing import observing, planning

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, tzinfo=UTC)
GIB = 2**30
SHARED = "/srv/shared"


def lease(name: str, **capacity: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "cpu": 8,
        "memory_bytes": 8 * GIB,
        "networks": ("default",),
        "shared_storage": SHARED,
        "migration_uri": f"qemu+tcp://{name}/system",
        **capacity,
    }
    return nodes.lease_body(
        node=name,
        labels={},
        capacity=nodes.Capacity(**facts),
        segments=(),
        now=NOW,
        rtts={"a": 0.1, "b": 0.1, "c": 0.1},
    )


def vm(
    name: str, node: str, *, phase: str = "Running", spec: dict[str, Any] | None = None, **m: Any
) -> dict[str, Any]:
    machine = {
        "cpu": {"cores": 1},
        "memory": "1Gi",
        "disks": [{"name": "root", "storage": "shared"}],
        "nics": [{"name": "eth0", "network": "default"}],
        **m,
    }
    return {
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
        "spec": {"memory": "1Gi", "disks": [{"name": "root"}], **(spec or {})},
        "status": {"nodeName": node, "machine": machine, "phase": phase, "desiredState": "Running"},
    }


def node_obj(name: str, *, cordoned: bool = False, off: bool | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if off is not None:
        status["conditions"] = [
            {"type": rebalancepolicies.NODE_POWER_OFF, "status": "True" if off else "False"}
        ]
    return {"metadata": {"name": name}, "spec": {"unschedulable": cordoned}, "status": status}


def migration(vm_name: str, phase: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{vm_name}-m-{phase}", "namespace": "ns", "labels": {}},
        "spec": {"vmName": vm_name},
        "status": {"phase": phase, **status},
    }


def see(vms: list[dict[str, Any]], **kw: Any) -> observing.Observed:
    args: dict[str, Any] = {
        "leases": [lease("a"), lease("b"), lease("c")],
        "node_objects": [node_obj("a"), node_obj("b"), node_obj("c")],
        "migration_objs": [],
        "now": NOW,
        **kw,
    }
    return observing.observe(vms=vms, **args)


def one(observed: observing.Observed) -> rb.Guest:
    (g,) = observed.guests
    return g


@pytest.mark.parametrize(
    ("obj", "stay"),
    [
        (vm("x", "a"), ""),
        (vm("x", "a", spec={"rebalance": "Never"}), "spec.rebalance is Never"),
        (vm("x", "a", nodeSelector={"zone": "z"}), "pinned by nodeSelector"),
        (vm("x", "a", phase="Stopped"), "not Running (Stopped)"),
        # every other node lacks the VM's network: no precondition passes
        (
            vm("x", "a", nics=[{"name": "eth0", "network": "lab"}]),
            "no other node passes the migration preconditions (node b lacks network",
        ),
        # a local disk without block copy: preconditions refuse every target
        (
            vm("x", "a", disks=[{"name": "root", "storage": "local"}]),
            "no other node passes the migration preconditions (disk root is on node a's local",
        ),
    ],
)
def test_observe_says_why_a_vm_stays(obj: dict[str, Any], stay: str) -> None:
    g = one(see([obj]))
    assert g.stay.startswith(stay), g.stay
    if not stay:
        assert g.targets == frozenset({"b", "c"})


def test_observe_an_unfinished_migration_keeps_the_vm() -> None:
    g = one(see([vm("x", "a")], migration_objs=[migration("x", "Running")]))
    assert g.stay == "Migration x-m-Running is moving it"


def test_observe_a_vm_whose_move_is_not_recorded_yet_stays() -> None:
    obj = vm("x", "a")
    obj["status"]["migration"] = {
        "name": "x-balance-1",
        "sourceNode": "a",
        "targetNode": "b",
        "phase": "Succeeded",
    }
    assert one(see([obj])).stay.startswith("Migration x-balance-1 moved it")
    obj["status"]["nodeName"] = "b"  # the VM reconciler moved it: free to move again
    assert one(see([obj])).stay == ""


def test_observe_targets_exclude_cordoned_and_preconditions() -> None:
    g = one(
        see(
            [vm("x", "a")],
            leases=[lease("a"), lease("b"), lease("c", shared_storage="/elsewhere")],
            node_objects=[node_obj("a"), node_obj("b", cordoned=True), node_obj("c")],
        )
    )
    assert g.stay and g.targets == frozenset()


def test_observe_takes_the_dirty_rate_of_the_last_finished_migration() -> None:
    old = migration(
        "x",
        "Succeeded",
        completedAt="2025-01-01T00:00:00Z",
        progress={"dirtyRateBytesPerSecond": 1, "transferRateBytesPerSecond": 10},
    )
    new = migration(
        "x",
        "Failed",
        completedAt="2025-06-01T00:00:00Z",
        progress={"dirtyRateBytesPerSecond": 5, "transferRateBytesPerSecond": 10},
    )
    g = one(see([vm("x", "a")], migration_objs=[old, new]))
    assert (g.dirty_rate_bytes_per_second, g.transfer_rate_bytes_per_second) == (5, 10)
    assert g.cost_bytes == 2 * GIB


def test_observe_powered_off_nodes_are_not_cordoned_but_off() -> None:
    seen = see(
        [vm("x", "a")],
        node_objects=[node_obj("a"), node_obj("b", cordoned=True, off=True), node_obj("c")],
    )
    b = next(h for h in seen.hosts if h.name == "b")
    assert b.powered_off and not b.node.cordoned
    assert seen.powered_off == frozenset({"b"})
    assert one(seen).targets == frozenset({"c"})  # never a target while off
    assert next(h for h in seen.hosts if h.name == "a").used == placing.Usage(1, GIB, 0)


# -- planning ------------------------------------------------------------------------


def policy(**spec: Any) -> rebalancepolicies.RebalancePolicy:
    return rebalancepolicies.RebalancePolicy.model_validate(
        {"metadata": {"name": "cluster"}, "spec": spec, "status": spec.pop("status", None)}
    )


@pytest.mark.parametrize(
    ("status", "ours", "why"),
    [
        (None, [], ""),
        ({"lastPassAt": NOW - timedelta(seconds=301)}, [], ""),
        ({"lastPassAt": NOW - timedelta(seconds=10)}, [], "not due yet"),
        (None, ["ns/x-balance-1"], "waiting for 1 Migration(s) of the last pass (ns/x-balance-1)"),
    ],
)
def test_due(status: dict[str, Any] | None, ours: list[str], why: str) -> None:
    p = policy(intervalSeconds=300, status=status)
    assert planning.due(p, ours, now=NOW) == why


def test_ours_unfinished_counts_only_labelled_unfinished_migrations() -> None:
    mine = migration("x", "Running")
    mine["metadata"]["labels"] = {rebalancepolicies.LABEL_REBALANCE: "Balance"}
    done = migration("y", "Succeeded")
    done["metadata"]["labels"] = {rebalancepolicies.LABEL_REBALANCE: "Balance"}
    user = migration("z", "Running")
    assert planning.ours_unfinished([mine, done, user]) == ["ns/x-m-Running"]


def test_migration_name_says_why_and_fits() -> None:
    assert planning.migration_name("web", rebalancepolicies.Mode.BALANCE, 17) == "web-balance-17"
    long = planning.migration_name("v" * 250, rebalancepolicies.Mode.CONSOLIDATE, 17)
    assert len(long) <= 253


def test_actions_mark_only_nodes_empty_now_and_wake_only_marked_ones() -> None:
    hosts = [
        rb.Host(placing.Node("a", cpu=8, memory_bytes=8 * GIB), placing.Usage(1, GIB, 0)),
        rb.Host(placing.Node("b", cpu=8, memory_bytes=8 * GIB), placing.Usage(1, GIB, 0)),
        rb.Host(placing.Node("c", cpu=8, memory_bytes=8 * GIB), placing.Usage()),
    ]
    guests = [rb.Guest("ns/x", "a", placing.Usage(1, GIB, 0))]
    guests.append(rb.Guest("ns/y", "b", placing.Usage(1, GIB, 0)))
    plan = rb.Plan(
        (rb.Move("ns/y", "b", "a", GIB),), "m", power_off=("b", "c"), power_on=("c", "d")
    )
    act = planning.actions(
        plan,
        mode=rebalancepolicies.Mode.CONSOLIDATE,
        hosts=hosts,
        guests=guests,
        uids={"ns/y": "uid-y"},
        powered_off=frozenset({"d"}),
        stamp=5,
    )
    assert act.create == (planning.NewMigration("ns", "y-consolidate-5", "y", "uid-y", "b", "a"),)
    assert act.mark_off == ("c",)  # b is emptied by the move: a later pass marks it
    assert act.wake == ("d",)
    assert act.reason is rebalancepolicies.RebalanceReason.MOVING


def test_body_is_an_ordinary_migration_with_a_target() -> None:
    new = planning.NewMigration("ns", "y-balance-5", "y", "uid-y", "b", "a")
    body = planning.body(new, rebalancepolicies.Mode.BALANCE)
    assert body["spec"] == {"vmName": "y", "targetNode": "a"}
    assert body["metadata"]["labels"][rebalancepolicies.LABEL_REBALANCE] == "Balance"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-y"
