"""moving.moved_to: only a Succeeded migration from the VM's current node moves it."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.controller.vms import moving

pytestmark = pytest.mark.unit


def _status(node: str | None, phase: str | None, src: str = "n1", tgt: str = "n2") -> Any:
    out: dict[str, Any] = {}
    if node is not None:
        out["nodeName"] = node
    if phase is not None:
        out["migration"] = {"name": "m", "sourceNode": src, "targetNode": tgt, "phase": phase}
    return out


@pytest.mark.parametrize(
    ("status", "want"),
    [
        (_status("n1", "Succeeded"), "n2"),
        (_status("n2", "Succeeded"), None),  # already moved
        (_status("n1", "Running"), None),  # still moving: stays on the source
        (_status("n1", "TargetReady"), None),
        (_status("n1", "Failed"), None),
        (_status("n1", "Cancelled"), None),
        (_status("n3", "Succeeded"), None),  # a record from another node: not ours to apply
        (_status(None, "Succeeded"), None),  # not placed
        (_status("n1", None), None),
        ({"nodeName": "n1", "migration": {"name": "m"}}, None),  # unreadable record
    ],
)
def test_moved_to(status: dict[str, Any], want: str | None) -> None:
    assert moving.moved_to(status) == want
