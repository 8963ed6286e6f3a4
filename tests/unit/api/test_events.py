"""The one Event body both sides post (api/events)."""

from __future__ import annotations

from datetime import UTC, datetime

from kubevisor.api import events

NOW = datetime(2026, 12, 2, tzinfo=UTC)
OBJ = {"metadata": {"name": "vm1", "namespace": "default", "uid": "u1"}}


def test_controller_event_names_its_object_and_component() -> None:
    body = events.body(
        OBJ,
        kind="VirtualMachine",
        type_="Normal",
        reason="Scheduled",
        message="m",
        component="kubevisor-controller",
        now=NOW,
    )
    assert body["involvedObject"] == {
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "VirtualMachine",
        "name": "vm1",
        "namespace": "default",
        "uid": "u1",
    }
    assert body["metadata"]["name"].startswith("vm1.")
    assert body["source"] == {"component": "kubevisor-controller"}
    assert "reportingInstance" not in body


def test_agent_event_carries_its_node_and_a_capped_message() -> None:
    body = events.body(
        OBJ,
        kind="VirtualMachine",
        type_="Warning",
        reason="HypervisorRefused",
        message="x" * 5000,
        component="kubevisor-agent",
        now=NOW,
        host="node-1",
    )
    assert body["source"] == {"component": "kubevisor-agent", "host": "node-1"}
    assert body["reportingInstance"] == "node-1"
    assert len(body["message"]) == events.MAX_MESSAGE
