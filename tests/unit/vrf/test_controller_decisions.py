"""Cluster-level VRF decisions: conflicts refuse the later VRF, tables, status summary."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kubevisor.controller.placement import placing
from kubevisor.controller.vrfs import planning as vrfsplanning
from kubevisor.controller.vrfs import status as vrfstatus

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, tzinfo=UTC)
NODES = [
    placing.Node("a", {"zone": "x"}),
    placing.Node("b", {"zone": "y"}),
    placing.Node("c", {"zone": "y"}, alive=False),
]


def _vrf(
    name: str, created: int, status: dict[str, Any] | None = None, gen: int = 1, **spec: Any
) -> vrfsplanning.Item:
    return vrfsplanning.item_from(
        {
            "metadata": {
                "namespace": "ns",
                "name": name,
                "generation": gen,
                "creationTimestamp": f"2025-01-01T00:00:{created:02d}Z",
            },
            "spec": spec,
            "status": status or {},
        }
    )


def _seg(name: str, network: str, vlan: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "network": network, "addresses": ["10.0.0.1/24"]}
    if vlan is not None:
        out["vlan"] = vlan
    return out


def test_selected_nodes_are_live_and_matching() -> None:
    assert vrfsplanning.selected_nodes({}, NODES) == ("a", "b")
    assert vrfsplanning.selected_nodes({"zone": "y"}, NODES) == ("b",)
    assert vrfsplanning.selected_nodes({"zone": "z"}, NODES) == ()


@pytest.mark.parametrize(
    ("later", "reason"),
    [
        ({"table": 100}, "TableConflict"),
        ({"interfaces": [_seg("x0", "red")]}, "InterfaceConflict"),
        ({"interfaces": [{"name": "h", "hostInterface": "eth1"}]}, "InterfaceConflict"),
    ],
)
def test_later_vrf_is_refused(later: dict[str, Any], reason: str) -> None:
    first = _vrf(
        "first",
        1,
        table=100,
        interfaces=[_seg("r0", "red"), {"name": "h", "hostInterface": "eth1"}],
    )
    # listed in the "wrong" order: creation time decides, not list order
    decided = vrfsplanning.decide([_vrf("second", 2, **later), first], NODES)
    assert decided[("ns", "first")].reason == ""
    assert decided[("ns", "second")].reason == reason
    assert "VRF ns/first" in decided[("ns", "second")].message
    assert "nodes a, b" in decided[("ns", "second")].message


def test_same_second_tie_keeps_the_incumbent() -> None:
    # creationTimestamp has one-second resolution: "blue" created in the same second as
    # the already accepted "red" sorts first by name, yet must not take red's table.
    red = _vrf("red", 1, status={"tableAllocated": 100}, table=100)
    blue = _vrf("blue", 1, table=100)
    decided = vrfsplanning.decide([blue, red], NODES)
    assert decided[("ns", "red")].reason == ""
    assert decided[("ns", "blue")].reason == "TableConflict"


@pytest.mark.parametrize(
    "later",
    [
        {"table": 100, "nodeSelector": {"zone": "y"}},  # disjoint nodes: tables are per node
        {"interfaces": [_seg("x0", "red", vlan=7)]},  # another VLAN is another segment
        {"interfaces": [_seg("x0", "blue")]},
    ],
)
def test_no_conflict(later: dict[str, Any]) -> None:
    first = _vrf("first", 1, table=100, nodeSelector={"zone": "x"}, interfaces=[_seg("r", "red")])
    decided = vrfsplanning.decide([first, _vrf("second", 2, **later)], NODES)
    assert decided[("ns", "second")].reason == ""


def test_tables_allocated_unique_and_kept() -> None:
    items = [
        _vrf("a", 1, status={"tableAllocated": 1001}),
        _vrf("b", 2),
        _vrf("c", 3, table=1000),  # explicit, later: conflicts with nobody (1000 is free)
        _vrf("d", 4, status={"tableAllocated": 1001}),  # a holds 1001 already
    ]
    decided = vrfsplanning.decide(items, NODES)
    tables = {k[1]: d.table for k, d in decided.items()}
    assert tables == {"a": 1001, "b": 1000, "c": None, "d": 1002}
    assert decided[("ns", "c")].reason == "TableConflict"  # b took 1000 on the same nodes


def test_tables_exhausted() -> None:
    decided = vrfsplanning.decide([_vrf("a", 1), _vrf("b", 2)], NODES, first=5, last=5)
    assert decided[("ns", "a")].table == 5
    assert decided[("ns", "b")].reason == "TablesExhausted"


@pytest.mark.parametrize(
    ("specs", "previous", "first", "last", "expected"),
    [
        ({"a": {}, "b": {}}, {}, 1000, 1999, {"a": 1000, "b": 1001}),
        ({"a": {}, "b": {}}, {"b": 1000}, 1000, 1999, {"a": 1001, "b": 1000}),
        ({"a": {"table": 7}, "b": {}}, {}, 1000, 1999, {"a": 7, "b": 1000}),
        ({"a": {}, "b": {}}, {}, 251, 256, {"a": 251, "b": 256}),  # 252-255 are the host's
        ({"a": {"table": 1000}, "b": {}}, {"b": 1000}, 1000, 1999, {"a": 1000, "b": 1001}),
    ],
)
def test_table_allocation(
    specs: dict[str, dict[str, Any]],
    previous: dict[str, int],
    first: int,
    last: int,
    expected: dict[str, int],
) -> None:
    items = []
    for created, (name, spec) in enumerate(specs.items()):
        held = {"tableAllocated": previous[name]} if name in previous else None
        items.append(_vrf(name, created, held, **spec))
    decided = vrfsplanning.decide(items, NODES, first=first, last=last)
    assert {k[1]: d.table for k, d in decided.items()} == expected


@pytest.mark.parametrize(
    ("name", "spec", "fragment"),
    [
        ("v", {"table": 252}, "252, 253, 254 and 255"),
        ("v", {"resources": {"cpu": "1k"}}, "more than 512"),
        ("v", {"interfaces": [_seg("x", "red") | {"addresses": ["0.0.0.0/0"]}]}, "unicast"),
        ("v" * 64, {}, "at most 63 characters"),
    ],
)
def test_invalid_stored_spec_is_refused(name: str, spec: dict[str, Any], fragment: str) -> None:
    item = _vrf(name, 1, **spec)
    decision = vrfsplanning.decide([item], NODES)[item.key]
    assert decision.reason == "InvalidSpec" and decision.table is None
    assert fragment in decision.message


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


@pytest.mark.parametrize(
    ("nodes", "phase", "ready", "reason"),
    [
        ({}, "Provisioning", "0/2", "InProgress"),
        ({"a": {"ready": True, "observedGeneration": 2}}, "Provisioning", "1/2", "InProgress"),
        (
            {
                "a": {"ready": True, "observedGeneration": 2},
                "b": {"ready": True, "observedGeneration": 2},
            },
            "Ready",
            "2/2",
            "AsExpected",
        ),
        (
            {
                "a": {"ready": True, "observedGeneration": 1},  # stale generation
                "b": {
                    "ready": False,
                    "observedGeneration": 2,
                    "reason": "BackendUnavailable",
                    "message": "802.1Q not available in this kernel.",
                },
            },
            "Degraded",
            "0/2",
            "BackendUnavailable",
        ),
        (
            {
                "a": {"ready": True, "observedGeneration": 2},
                "b": {"ready": False, "observedGeneration": 2, "message": "Odd: no reason"},
            },
            "Degraded",
            "1/2",
            "NodeNotReady",  # the reason field, never parsed out of the message
        ),
    ],
)
def test_status_summarises_node_entries(
    nodes: dict[str, Any], phase: str, ready: str, reason: str
) -> None:
    item = _vrf("v", 1, status={"nodes": nodes}, gen=2, table=7)
    decision = vrfsplanning.decide([item], NODES)[item.key]
    status = vrfstatus.build_status(item, decision, now=NOW)
    assert (status["phase"], status["readyNodes"]) == (phase, ready)
    assert _cond(status, "Ready")["reason"] == reason
    for node, entry in nodes.items():
        if entry.get("ready") is False:
            assert f"{node}: {entry['message']}" in _cond(status, "Ready")["message"]
    assert status["tableAllocated"] == 7 and status["observedGeneration"] == 2
    assert "nodes" not in status  # never ours
    assert vrfstatus.same({**item.status, **status}, status)


def test_refused_status_and_no_nodes() -> None:
    item = _vrf("v", 1, nodeSelector={"zone": "none"})
    status = vrfstatus.build_status(item, vrfsplanning.decide([item], NODES)[item.key], now=NOW)
    assert status["phase"] == "Pending" and status["readyNodes"] == "0/0"
    assert _cond(status, "Ready")["reason"] == "Unschedulable"
    refused = vrfsplanning.Decision(("a",), None, reason="TableConflict", message="m")
    status = vrfstatus.build_status(item, refused, now=NOW)
    assert status["phase"] == "Failed" and "tableAllocated" not in status
    assert _cond(status, "Ready")["reason"] == "TableConflict"


def _daemon(*sessions: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "bird",
        "state": "Running",
        "sessions": list(sessions),
        "sessionsUp": sum(1 for s in sessions if s["up"]),
        "sessionsTotal": len(sessions),
    }


UP = {"name": "peer", "protocol": "BGP", "up": True, "state": "Established"}
DOWN = {
    "name": "down1",
    "protocol": "BGP",
    "up": False,
    "state": "Connect Socket: No route to host",
    "neighbor": "10.0.0.9",
}
OSPF = {"name": "o1", "protocol": "OSPF", "up": False, "state": "Running", "adjacencies": 0}


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        ({"a": {}, "b": {}}, None),
        ({"a": {"daemon": _daemon()}, "b": {}}, None),
        (
            {"a": {"daemon": _daemon(UP)}, "b": {"daemon": _daemon(UP)}},
            ("True", "SessionsUp", "2/2 sessions up."),
        ),
        (
            {"a": {"daemon": _daemon(UP, DOWN)}, "b": {"daemon": _daemon(OSPF)}},
            (
                "False",
                "SessionDown",
                "1/3 sessions up; a: BGP session down1 (neighbor 10.0.0.9) is Connect"
                " Socket: No route to host; b: OSPF instance o1 has no Full adjacency"
                " (Running).",
            ),
        ),
    ],
)
def test_routing_sessions_condition(
    nodes: dict[str, Any], expected: tuple[str, str, str] | None
) -> None:
    item = _vrf("v", 1, status={"nodes": nodes}, table=7)
    decision = vrfsplanning.decide([item], NODES)[item.key]
    status = vrfstatus.build_status(item, decision, now=NOW)
    got = [c for c in status["conditions"] if c["type"] == "RoutingSessions"]
    if expected is None:
        assert got == []
    else:
        assert (got[0]["status"], got[0]["reason"], got[0]["message"]) == expected
    assert vrfstatus.same({**item.status, **status}, status)


def test_routing_sessions_condition_goes_when_no_session_is_left() -> None:
    item = _vrf("v", 1, status={"nodes": {"a": {"daemon": _daemon(DOWN)}}}, table=7)
    decision = vrfsplanning.decide([item], NODES)[item.key]
    first = vrfstatus.build_status(item, decision, now=NOW)
    later = _vrf("v", 1, status={**first, "nodes": {"a": {}}}, table=7)
    status = vrfstatus.build_status(later, decision, now=NOW)
    assert [c["type"] for c in status["conditions"]] == ["Ready", "Scheduled"]
