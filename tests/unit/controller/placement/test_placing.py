"""Placement: capacity, nodeSelector, GPUs, networks, lost nodes, and the reason text."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from kubevisor.api import machines, nodes
from kubevisor.controller.placement import placing
from kubevisor.controller.placement.placing import Node, Usage

pytestmark = pytest.mark.unit

Mi = 2**20


def _node(name: str, **kw: object) -> Node:
    defaults: dict[str, object] = {
        "cpu": 4,
        "memory_bytes": 1024 * Mi,
        "networks": frozenset({"default"}),
    }
    defaults.update(kw)
    return Node(name, **defaults)  # type: ignore[arg-type]


def _request(**machine: object) -> placing.Request:
    spec = {
        "cpu": {"cores": 1},
        "memory": "256Mi",
        "nics": [{"name": "eth0", "network": "default"}],
        **machine,
    }
    return placing.request_for(machines.MachineSpec.model_validate(spec))


@pytest.mark.parametrize(
    ("request_kw", "nodes", "used", "node", "reason_parts"),
    [
        ({}, [_node("a")], {}, "a", []),
        # most free memory wins
        ({}, [_node("a"), _node("b")], {"a": Usage(1, 512 * Mi, 0)}, "b", []),
        (
            {},
            [_node("a", memory_bytes=128 * Mi)],
            {},
            None,
            ["a: not enough memory (need 256Mi, free 128Mi)"],
        ),
        (
            {},
            [_node("a")],
            {"a": Usage(0, 896 * Mi, 0)},
            None,
            ["a: not enough memory (need 256Mi, free 128Mi)"],
        ),
        ({"cpu": {"cores": 8}}, [_node("a")], {}, None, ["a: not enough CPU (need 8, free 4)"]),
        ({"gpus": 1}, [_node("a"), _node("b", gpus=1)], {}, "b", []),
        ({"gpus": 1}, [_node("a")], {}, None, ["a: lacks GPUs"]),
        (
            {"gpus": 2},
            [_node("b", gpus=2)],
            {"b": Usage(0, 0, 1)},
            None,
            ["b: not enough GPUs (need 2, free 1)"],
        ),
        (
            {"nodeSelector": {"zone": "x"}},
            [_node("a"), _node("b", labels={"zone": "x"})],
            {},
            "b",
            [],
        ),
        (
            {"nodeSelector": {"zone": "x"}},
            [_node("a", labels={"zone": "y"})],
            {},
            None,
            ["a: does not match nodeSelector zone=x"],
        ),
        (
            {"nics": [{"name": "e", "network": "storage"}]},
            [_node("a")],
            {},
            None,
            ["a: lacks network storage"],
        ),
        ({}, [_node("a", alive=False), _node("b")], {}, "b", []),
        ({}, [_node("a", alive=False)], {}, None, ["a: node lost"]),
        ({}, [], {}, None, ["no kubevisor agent"]),
        (
            {"gpus": 1},
            [_node("node-a", memory_bytes=128 * Mi), _node("node-b")],
            {},
            None,
            ["node-a: lacks GPUs", "; node-b: lacks GPUs"],
        ),
    ],
)
def test_place(
    request_kw: dict[str, object],
    nodes: list[Node],
    used: dict[str, Usage],
    node: str | None,
    reason_parts: list[str],
) -> None:
    result = placing.place(_request(**request_kw), nodes, used)
    assert result.node == node, result.reason
    for part in reason_parts:
        assert part in result.reason


def test_only_nodes_pins_a_clone_to_its_source_node() -> None:
    spec = machines.MachineSpec.model_validate({"cpu": {}, "memory": "64Mi"})
    req = placing.request_for(spec, only_nodes=["b"], only_reason="clone source disks are on b")
    result = placing.place(req, [_node("a"), _node("b")], {})
    assert result.node == "b"
    result = placing.place(req, [_node("a"), _node("b", alive=False)], {})
    assert result.node is None
    assert "a: clone source disks are on b" in result.reason


def test_cpu_overcommit() -> None:
    req = _request(cpu={"cores": 6})
    assert placing.place(req, [_node("a")], {}).node is None
    assert placing.place(req, [_node("a")], {}, cpu_overcommit=2.0).node == "a"


def _lease(renew: datetime, capacity: object) -> dict[str, object]:
    return {
        "metadata": {
            "name": "n1",
            "labels": {"kubevisor.io/agent": "true", "gpu": "yes"},
            "annotations": {"kubevisor.io/capacity": json.dumps(capacity)},
        },
        "spec": {
            "holderIdentity": "n1",
            "leaseDurationSeconds": 30,
            "renewTime": renew.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    }


def test_node_from_lease() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    cap = {
        "cpu": 2,
        "memoryBytes": 4 * 2**30,
        "gpus": 1,
        "networks": ["default"],
        "sharedStorage": "/srv",
        "migrationURI": None,
        "address": None,
    }
    node = placing.node_from_lease(_lease(now - timedelta(seconds=5), cap), now=now)
    assert node == Node(
        "n1",
        {"kubevisor.io/agent": "true", "gpu": "yes"},
        2,
        4 * 2**30,
        1,
        frozenset({"default"}),
        "/srv",
        True,
    )
    stale = placing.node_from_lease(_lease(now - timedelta(seconds=31), cap), now=now)
    assert not stale.alive
    broken = placing.node_from_lease(_lease(now, "nonsense"), now=now)
    assert broken.memory_bytes == 0 and broken.alive


@pytest.mark.parametrize(
    ("renewed_ago_s", "checked_later_s", "alive"),
    [(5, 0, True), (5, 24, True), (5, 26, False), (31, 0, False)],
)
def test_a_lease_parsed_once_gives_the_same_node_and_its_liveness_at_each_now(
    renewed_ago_s: int, checked_later_s: int, alive: bool
) -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    cap = {"cpu": 2, "memoryBytes": 2**30, "networks": ["default"]}
    lease = _lease(now - timedelta(seconds=renewed_ago_s), cap)
    later = now + timedelta(seconds=checked_later_s)
    parsed = nodes.parse(lease)
    node = placing.node_of(parsed, now=later, cordoned=frozenset({"n1"}))
    assert node == placing.node_from_lease(lease, now=later, cordoned=frozenset({"n1"}))
    assert node.alive is alive and node.cordoned


def test_cordoned_node_is_refused_and_named() -> None:
    req = placing.Request(1, 2**30, 0, frozenset(), {})
    big = placing.Node("node-1", cpu=8, memory_bytes=2**34, cordoned=True)
    small = placing.Node("node-2", cpu=8, memory_bytes=2**31)
    assert placing.place(req, [big, small], {}).node == "node-2"
    refused = placing.place(req, [big], {})
    assert refused.node is None and "node-1: cordoned" in refused.reason


def test_node_marked_for_power_off_is_refused_even_uncordoned() -> None:
    req = placing.Request(1, 2**30, 0, frozenset(), {})
    off = placing.Node("node-1", cpu=8, memory_bytes=2**34, powered_off=True)
    on = placing.Node("node-2", cpu=8, memory_bytes=2**31)
    assert placing.place(req, [off, on], {}).node == "node-2"
    refused = placing.place(req, [off], {})
    assert refused.node is None and "node-1: marked for power-off" in refused.reason


def test_cordoned_from_node_objects() -> None:
    objs = [
        {"metadata": {"name": "node-1"}, "spec": {"unschedulable": True}},
        {"metadata": {"name": "node-2"}, "spec": {}},
    ]
    assert placing.cordoned(objs) == {"node-1"}


def test_selector_mismatch_lists_the_node_labels() -> None:
    req = placing.Request(1, 1, 0, frozenset(), {"zone": "b"})
    node = placing.Node(
        "node-1", labels={"zone": "a", "kubevisor.io/agent": "true"}, cpu=2, memory_bytes=2**30
    )
    why = placing.place(req, [node], {}).reason
    assert "its labels: kubevisor.io/agent=true, zone=a" in why


@pytest.mark.parametrize(
    ("reached", "asked", "why"),
    [
        (frozenset({"nas-1"}), frozenset({"nas-1"}), ""),
        (frozenset(), frozenset(), ""),
        (frozenset({"san-1"}), frozenset({"nas-1"}), "does not reach StorageBackend nas-1"),
        (frozenset(), frozenset({"b", "a"}), "does not reach StorageBackends a, b"),
    ],
)
def test_node_must_reach_every_backend_the_disks_name(
    reached: frozenset[str], asked: frozenset[str], why: str
) -> None:
    node = placing.Node("node-1", cpu=8, memory_bytes=2**34, storage_backends=reached)
    req = placing.Request(1, 2**30, 0, frozenset(), {}, storage_backends=asked)
    assert placing.refusal(node, placing.Usage(), req) == why


def test_request_names_the_backends_of_its_disks_and_lease_reports_them() -> None:
    machine = machines.MachineSpec.model_validate(
        {"memory": "1Gi", "cpu": {}, "disks": [
            {"name": "a", "backend": "nas-1"}, {"name": "b"}, {"name": "c", "backend": "nas-1"},
        ]}
    )  # fmt: skip
    assert placing.request_for(machine).storage_backends == {"nas-1"}
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    cap = {"cpu": 2, "memoryBytes": 2**30, "networks": [], "storageBackends": {"nas-1": "nfs"}}
    assert placing.node_from_lease(_lease(now, cap), now=now).storage_backends == {"nas-1"}
