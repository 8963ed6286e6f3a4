"""The node contract (``api/nodes``): what the agent writes into its Lease is what the
controller reads back, and a broken Lease parses as a node with nothing to offer."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubevisor.api import nodes
from kubevisor.controller.placement import placing

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
FULL = nodes.Capacity(
    cpu=8,
    memory_bytes=16 * 2**30,
    gpus=1,
    networks=("vlan", "default"),
    shared_storage="/srv/shared",
    migration_uri="qemu+tcp://10.77.0.11/system",
    address="10.77.0.11",
)


@pytest.mark.parametrize(
    ("capacity", "segments"),
    [
        (FULL, frozenset({"default", "vlan-100"})),
        (nodes.Capacity(cpu=2, memory_bytes=2**30), frozenset()),
        (nodes.Capacity(networks=()), frozenset({"default"})),
    ],
)
def test_lease_round_trip(capacity: nodes.Capacity, segments: frozenset[str]) -> None:
    body = nodes.lease_body(
        node="n1", labels={"zone": "a"}, capacity=capacity, segments=segments, now=NOW
    )
    parsed = nodes.parse(json.loads(json.dumps(body)))
    assert parsed == nodes.NodeLease(
        name="n1",
        labels={"zone": "a", nodes.LABEL_AGENT: "true"},
        capacity=capacity.model_copy(update={"networks": tuple(sorted(capacity.networks))}),
        segments=segments,
        renew_time=NOW,
        duration_s=nodes.LEASE_DURATION_S,
    )
    assert body["metadata"]["namespace"] == nodes.LEASE_NAMESPACE
    assert parsed.alive(NOW + timedelta(seconds=nodes.LEASE_DURATION_S - 1))
    assert not parsed.alive(NOW + timedelta(seconds=nodes.LEASE_DURATION_S))


def test_capacity_wire_form_is_the_documented_json() -> None:
    """docs/architecture.md, "Nodes": every key, camelCase, migrationURI, sorted."""
    assert json.loads(nodes.capacity_json(FULL)) == {
        "cpu": 8,
        "memoryBytes": 16 * 2**30,
        "gpus": 1,
        "networks": ["default", "vlan"],
        "sharedStorage": "/srv/shared",
        "migrationURI": "qemu+tcp://10.77.0.11/system",
        "address": "10.77.0.11",
    }
    assert nodes.capacity_json(FULL) == nodes.capacity_json(
        FULL.model_copy(update={"networks": ("default", "vlan")})
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, nodes.NO_CAPACITY),
        ("", nodes.NO_CAPACITY),
        ("nonsense", nodes.NO_CAPACITY),
        ('"nonsense"', nodes.NO_CAPACITY),
        ('["cpu"]', nodes.NO_CAPACITY),
        ('{"cpu": "many"}', nodes.NO_CAPACITY),
        ('{"cpu": 2}', nodes.Capacity(cpu=2, networks=())),
        ('{"cpu": 2, "gpus": null, "sharedStorage": null}', nodes.Capacity(cpu=2, networks=())),
        ('{"cpu": 2, "future": "field"}', nodes.Capacity(cpu=2, networks=())),
        ('{"networks": ["default"], "migrationURI": "x"}', nodes.Capacity(migration_uri="x")),
    ],
)
def test_parse_capacity(text: str | None, expected: nodes.Capacity) -> None:
    assert nodes.parse_capacity(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, frozenset()),
        ("nonsense", frozenset()),
        ('{"a": 1}', frozenset()),
        ('["vlan-100","default"]', frozenset({"default", "vlan-100"})),
    ],
)
def test_parse_segments(text: str | None, expected: frozenset[str]) -> None:
    assert nodes.parse_segments(text) == expected


def test_segments_json_is_sorted() -> None:
    assert nodes.segments_json({"vlan-100", "default"}) == '["default","vlan-100"]'


@pytest.mark.parametrize(
    ("spec", "alive"),
    [
        ({}, False),
        ({"renewTime": "garbage", "leaseDurationSeconds": 30}, False),
        ({"renewTime": "2025-01-01T11:59:50.000000Z", "leaseDurationSeconds": 30}, True),
        ({"renewTime": "2025-01-01T11:59:50Z", "leaseDurationSeconds": 5}, False),
        ({"renewTime": NOW - timedelta(seconds=1), "leaseDurationSeconds": 30}, True),
    ],
)
def test_liveness_from_renew_time(spec: dict[str, Any], alive: bool) -> None:
    assert nodes.parse({"metadata": {"name": "n"}, "spec": spec}).alive(NOW) is alive


def test_renewal_patch_writes_metadata_only_when_it_changed() -> None:
    args: dict[str, Any] = {
        "node": "n1",
        "labels": {"zone": "a"},
        "capacity": FULL,
        "segments": frozenset({"default"}),
    }
    body = nodes.lease_body(now=NOW, **args)
    later = NOW + timedelta(seconds=10)
    quiet = nodes.renewal_patch(current=body, now=later, **args)
    assert quiet == {
        "spec": {
            "renewTime": nodes.micro_time(later),
            "holderIdentity": "n1",
            "leaseDurationSeconds": nodes.LEASE_DURATION_S,
        }
    }
    moved = nodes.renewal_patch(
        current=body, now=later, **{**args, "segments": frozenset({"default", "vlan-7"})}
    )
    assert moved["metadata"] == {"annotations": {nodes.ANNOTATION_SEGMENTS: '["default","vlan-7"]'}}
    relabelled = nodes.renewal_patch(current={}, now=later, **args)
    assert relabelled["metadata"]["labels"] == {"zone": "a", nodes.LABEL_AGENT: "true"}
    assert set(relabelled["metadata"]["annotations"]) == {
        nodes.ANNOTATION_CAPACITY,
        nodes.ANNOTATION_SEGMENTS,
    }


def test_the_controller_places_on_what_the_agent_published() -> None:
    """The agent's Lease, read by placement: capacity, labels and liveness survive."""
    body = nodes.lease_body(
        node="n1", labels={"gpu": "yes"}, capacity=FULL, segments=frozenset(), now=NOW
    )
    node = placing.node_from_lease(body, now=NOW + timedelta(seconds=5))
    assert node == placing.Node(
        name="n1",
        labels={"gpu": "yes", nodes.LABEL_AGENT: "true"},
        cpu=8,
        memory_bytes=16 * 2**30,
        gpus=1,
        networks=frozenset({"default", "vlan"}),
        shared_storage="/srv/shared",
        alive=True,
    )


def test_renewal_keeps_a_short_lease_duration_for_tests() -> None:
    """An agent started with --lease-duration-seconds renews with that duration, so the
    controller (which reads it from each Lease) judges the node by it."""
    now = datetime(2026, 12, 3, tzinfo=UTC)
    patch = nodes.renewal_patch(
        current={}, node="n", labels={}, capacity=nodes.Capacity(), segments=[], now=now,
        duration_s=9,
    )  # fmt: skip
    assert patch["spec"]["leaseDurationSeconds"] == 9
    default = nodes.renewal_patch(
        current={}, node="n", labels={}, capacity=nodes.Capacity(), segments=[], now=now
    )
    assert default["spec"]["leaseDurationSeconds"] == nodes.LEASE_DURATION_S == 30


def test_capacity_reports_reached_storage_backends_only_when_any() -> None:
    plain = nodes.Capacity(cpu=1)
    assert "storageBackends" not in nodes.capacity_json(plain)
    reached = nodes.Capacity(cpu=1, storage_backends={"san-1": "iscsi", "nas-1": "nfs"})
    text = nodes.capacity_json(reached)
    assert '"storageBackends":{"nas-1":"nfs","san-1":"iscsi"}' in text
    assert nodes.parse_capacity(text) == reached
