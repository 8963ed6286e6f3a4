"""Table tests for the node-loss plan (controller/nodeloss/planning.py) and the shared
rules in api/nodeloss.py (fencing, the recovery record, stale copies)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubevisor.api import groups, nodeloss, nodes, rebalancepolicies
from kubevisor.api.conditions import Reason
from kubevisor.controller.nodeloss import planning
from kubevisor.controller.placement import placing, reserving
from kubevisor.controller.vms import moving

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 3, 8, 0, 0, tzinfo=UTC)
GI = 2**30


def disk(name: str, storage: str = "shared") -> dict[str, Any]:
    return {"name": name, "size": "1Gi", "storage": storage}


def vm(
    name: str,
    node: str = "node-1",
    *,
    strategy: str = "Always",
    disks: list[dict[str, Any]] | None = None,
    priority: int | None = None,
    created: str = "2026-12-01T00:00:00Z",
    memory: str = "1Gi",
    extra_status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"runStrategy": strategy}
    if priority is not None:
        spec["priority"] = priority
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "creationTimestamp": created,
        },
        "spec": spec,
        "status": {
            "nodeName": node,
            "phase": "Running",
            "desiredState": "Running",
            "machine": {
                "cpu": {"cores": 1},
                "memory": memory,
                "disks": disks if disks is not None else [disk("root")],
            },
            **(extra_status or {}),
        },
    }


def lost(fenced: bool = True, name: str = "node-1") -> dict[str, planning.LostNode]:
    return {name: planning.LostNode(name, 42.0, fenced)}


def chooser(free_gi: dict[str, int]) -> planning.Choose:
    """A real Placer (ledger and placement rules, no API) over nodes with ``free_gi``."""
    placer = reserving.Placer()
    candidates = [
        placing.Node(name=n, cpu=8, memory_bytes=gi * GI, networks=frozenset({"default"}))
        for n, gi in free_gi.items()
    ]

    def choose(uid: str, request: placing.Request) -> placing.Placement:
        return placer.choose(uid, request, candidates)

    return choose


@pytest.mark.parametrize(
    ("vms", "lost_nodes", "free", "reasons", "moves"),
    [
        pytest.param(
            [vm("a"), vm("b")],
            lost(fenced=False),
            {"node-2": 8},
            {"a": Reason.AWAITING_FENCE, "b": Reason.AWAITING_FENCE},
            {},
            id="lost, not fenced: nothing restarts elsewhere",
        ),
        pytest.param(
            [vm("a"), vm("b", strategy="RerunOnFailure")],
            lost(),
            {"node-2": 8},
            {"a": Reason.RECOVERING, "b": Reason.RECOVERING},
            {"a": "node-2", "b": "node-2"},
            id="fenced: Always and RerunOnFailure restart elsewhere",
        ),
        pytest.param(
            [vm("m", strategy="Manual"), vm("o", strategy="Once"), vm("h", strategy="Halted")],
            lost(),
            {"node-2": 8},
            {"m": Reason.NOT_RESTARTED, "o": Reason.NOT_RESTARTED, "h": Reason.NOT_RESTARTED},
            {},
            id="other runStrategies stay",
        ),
        pytest.param(
            [vm("l", disks=[disk("root"), disk("data", "local")])],
            lost(),
            {"node-2": 8},
            {"l": Reason.NOT_RECOVERABLE},
            {},
            id="a node-local disk: cannot be recovered",
        ),
        pytest.param(
            [vm("ok", node="node-2")],
            lost(),
            {"node-3": 8},
            {"ok": None},
            {},
            id="a VM on a live node: no condition",
        ),
        pytest.param(
            [
                vm("low", priority=1, created="2026-11-01T00:00:00Z", memory="2Gi"),
                vm("high", priority=10, memory="2Gi"),
                vm("none", created="2026-10-01T00:00:00Z", memory="2Gi"),
            ],
            lost(),
            {"node-2": 4},
            {"high": Reason.RECOVERING, "low": Reason.RECOVERING, "none": Reason.UNSCHEDULABLE},
            {"high": "node-2", "low": "node-2"},
            id="priority order within capacity: the lowest waits",
        ),
        pytest.param(
            [vm("a", priority=5), vm("b", priority=5, created="2026-11-01T00:00:00Z")],
            lost(),
            {"node-2": 1},
            {"a": Reason.UNSCHEDULABLE, "b": Reason.RECOVERING},
            {"b": "node-2"},
            id="equal priority: older first",
        ),
        pytest.param(
            [vm("a", extra_status={"recovery": {"fromNode": "node-1", "toNode": "node-2"}})],
            lost(),
            {"node-3": 8},
            {"a": Reason.RECOVERING},
            {},
            id="already recorded: not chosen again",
        ),
        pytest.param(
            [
                vm(
                    "mig",
                    extra_status={
                        "migration": {
                            "name": "m1",
                            "sourceNode": "node-1",
                            "targetNode": "node-2",
                            "phase": "Running",
                        }
                    },
                )
            ],
            lost(),
            {"node-2": 8},
            {"mig": Reason.NOT_RESTARTED},
            {},
            id="an unfinished migration keeps it",
        ),
        pytest.param(
            [vm("a")],
            lost(),
            {},
            {"a": Reason.UNSCHEDULABLE},
            {},
            id="no other node",
        ),
    ],
)
def test_plan(
    vms: list[dict[str, Any]],
    lost_nodes: dict[str, planning.LostNode],
    free: dict[str, int],
    reasons: dict[str, str | None],
    moves: dict[str, str],
) -> None:
    result = planning.plan(lost_nodes, vms, choose=chooser(free))
    got = {k[1]: (c.reason if c else None) for k, c in result.conditions.items()}
    assert got == reasons
    assert {r.key[1]: r.to_node for r in result.recoveries} == moves
    for r in result.recoveries:
        assert r.from_node == "node-1"


def test_recovery_order_is_the_placement_order() -> None:
    order = planning.recovery_order(
        [vm("c"), vm("b", priority=3), vm("a"), vm("z", priority=-1), vm("y", priority=3)]
    )
    assert [o["metadata"]["name"] for o in order] == ["b", "y", "a", "c", "z"]


def test_messages_name_the_node_and_how_long_ago() -> None:
    result = planning.plan(lost(fenced=False), [vm("a")], choose=chooser({}))
    cond = result.conditions[("default", "a")]
    assert cond is not None
    assert "node node-1 last renewed its Lease 42s ago" in cond.message
    assert nodeloss.TAINT_OUT_OF_SERVICE in cond.message
    local = planning.plan(
        lost(), [vm("l", disks=[disk("data", "local")])], choose=chooser({"node-2": 8})
    )
    msg = local.conditions[("default", "l")]
    assert msg is not None and "disk data is node-local on node-1" in msg.message


def test_a_vm_on_a_node_powered_off_by_consolidation_waits_for_the_fence() -> None:
    off = {"node-1": planning.LostNode("node-1", 42.0, False, powered_off=True)}
    result = planning.plan(off, [vm("raced")], choose=chooser({"node-2": 8}))
    cond = result.conditions[("default", "raced")]
    assert cond is not None and cond.reason == Reason.AWAITING_FENCE
    assert "consolidation marked it for power-off while it held this VM" in cond.message
    assert result.recoveries == ()
    fenced = {"node-1": planning.LostNode("node-1", 42.0, True, powered_off=True)}
    moved = planning.plan(fenced, [vm("raced")], choose=chooser({"node-2": 8}))
    assert [r.to_node for r in moved.recoveries] == ["node-2"]  # fenced: as any lost node


def lease(name: str, renewed: datetime | None) -> nodes.NodeLease:
    return nodes.NodeLease(
        name=name,
        labels={},
        capacity=nodes.NO_CAPACITY,
        segments=frozenset(),
        renew_time=renewed,
        duration_s=30,
    )


def node_obj(name: str, *taints: dict[str, str], off: bool = False) -> dict[str, Any]:
    conds = [{"type": rebalancepolicies.NODE_POWER_OFF, "status": "True"}] if off else []
    return {
        "metadata": {"name": name},
        "spec": {"taints": list(taints)},
        "status": {"conditions": conds},
    }


def test_lost_nodes() -> None:
    got = planning.lost_nodes(
        [
            lease("alive", NOW - timedelta(seconds=5)),
            lease("expired", NOW - timedelta(seconds=31)),
            lease("fenced", NOW - timedelta(seconds=90)),
            lease("off", NOW - timedelta(seconds=60)),
            lease("off-empty", NOW - timedelta(seconds=60)),
        ],
        [
            node_obj("expired", {"key": "other", "effect": "NoSchedule"}),
            node_obj("fenced", nodeloss.out_of_service_taint()),
            node_obj("off", off=True),
            node_obj("off-empty", off=True),
        ],
        placed_on=["alive", "expired", "fenced", "no-lease", "off"],
        now=NOW,
    )
    assert got == {
        "expired": planning.LostNode("expired", 31.0, False),
        "fenced": planning.LostNode("fenced", 90.0, True),
        "no-lease": planning.LostNode("no-lease", None, False),
        "off": planning.LostNode("off", 60.0, False, powered_off=True),
    }  # off-empty: powered off with no VM placed there is nobody's concern


@pytest.mark.parametrize(
    ("status", "want"),
    [
        ({"nodeName": "a", "recovery": {"fromNode": "a", "toNode": "b"}}, "b"),
        ({"nodeName": "b", "recovery": {"fromNode": "a", "toNode": "b"}}, None),
        ({"nodeName": "c", "recovery": {"fromNode": "a", "toNode": "b"}}, None),
        ({"nodeName": "a"}, None),
        ({"nodeName": "a", "recovery": {"fromNode": "a"}}, None),
        ({"recovery": {"fromNode": "a", "toNode": "b"}}, None),
    ],
)
def test_recovered_to(status: dict[str, Any], want: str | None) -> None:
    assert nodeloss.recovered_to(status) == want
    assert moving.relocated_to(status) == want


def labelled(**labels: str) -> dict[str, Any]:
    return {"metadata": {"labels": labels}}


@pytest.mark.parametrize(
    ("obj", "stale"),
    [
        (labelled(**{groups.LABEL_NODE: "node-2"}), True),
        (labelled(**{groups.LABEL_NODE: "node-1"}), False),
        (labelled(), False),
        (None, False),
        (
            labelled(**{groups.LABEL_NODE: "node-2", groups.LABEL_MIGRATION_TARGET: "node-1"}),
            False,
        ),
        (
            labelled(**{groups.LABEL_NODE: "node-2", groups.LABEL_MIGRATION_TARGET: "node-3"}),
            True,
        ),
    ],
)
def test_stale_here(obj: dict[str, Any] | None, stale: bool) -> None:
    assert nodeloss.stale_here(obj, "node-1") is stale


def test_fenced_reads_any_value_and_effect() -> None:
    assert nodeloss.fenced(node_obj("n", {"key": nodeloss.TAINT_OUT_OF_SERVICE}))
    assert not nodeloss.fenced(node_obj("n"))
    assert not nodeloss.fenced({"metadata": {"name": "n"}})
