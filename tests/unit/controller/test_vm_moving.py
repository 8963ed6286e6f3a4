"""controller/vms/moving: when a succeeded migration moves a VM, and its labels after."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.api import groups
from kubevisor.controller.vms import moving

pytestmark = pytest.mark.unit


def _status(phase: str, node: str = "node-1", **record: Any) -> dict[str, Any]:
    rec = {"name": "m1", "sourceNode": "node-1", "targetNode": "node-2", "phase": phase, **record}
    return {"nodeName": node, "migration": rec}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, None),
        ({"nodeName": "node-1"}, None),
        (_status("Running"), None),
        (_status("TargetReady"), None),
        (_status("Failed"), None),
        (_status("Cancelled"), None),
        (_status("Succeeded"), "node-2"),
        (_status("Succeeded", node="node-2"), None),  # already moved
        (_status("Succeeded", node="node-3"), None),  # a newer placement: not this record's
        (_status("Succeeded", targetNode="node-1"), None),
        ({"nodeName": "node-1", "migration": {"phase": "Succeeded"}}, None),  # unreadable
    ],
)
def test_moved_to(status: dict[str, Any], expected: str | None) -> None:
    assert moving.moved_to(status) == expected


def test_moved_labels_drop_the_target_label_and_name_the_target() -> None:
    labels = {
        groups.LABEL_NODE: "node-1",
        groups.LABEL_MIGRATION_TARGET: "node-2",
        "app": "web",
    }
    assert moving.moved_labels(labels, "node-2") == {groups.LABEL_NODE: "node-2", "app": "web"}
