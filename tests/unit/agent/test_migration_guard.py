"""The two-copies guard: a placed VM leaving this node by migration is not started here."""

from __future__ import annotations

import pytest

from kubevisor.agent.vms.handling import leaving_here

pytestmark = pytest.mark.unit


def status(phase: str, source: str = "node-1") -> dict[str, object]:
    return {
        "migration": {"name": "m", "sourceNode": source, "targetNode": "node-2", "phase": phase}
    }


@pytest.mark.parametrize(
    ("st", "node", "want"),
    [
        ({}, "node-1", False),
        (status("Running"), "node-1", True),
        (status("Succeeded"), "node-1", True),
        (status("TargetReady"), "node-1", True),
        (status("Failed"), "node-1", False),
        (status("Cancelled"), "node-1", False),
        (status("Running"), "node-2", False),
        ({"migration": {"name": "m"}}, "node-1", False),
    ],
)
def test_leaving_here(st: dict[str, object], node: str, want: bool) -> None:
    assert leaving_here(st, node) is want
