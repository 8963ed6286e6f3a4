"""The agent's sweep verdict (agent/vms/orphans.judge): orphaned, stale copy, or kept."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.agent import domainxml
from kubevisor.agent.vms import orphans
from kubevisor.api import groups

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("obj", "verdict"),
    [
        (None, "orphaned"),
        ({"metadata": {"uid": "other", "labels": {groups.LABEL_NODE: "node-1"}}}, "orphaned"),
        ({"metadata": {"uid": "u", "labels": {groups.LABEL_NODE: "node-2"}}}, "stale"),
        ({"metadata": {"uid": "u", "labels": {groups.LABEL_NODE: "node-1"}}}, None),
        ({"metadata": {"uid": "u"}}, None),
    ],
)
def test_agent_sweep_judge(obj: dict[str, Any] | None, verdict: str | None) -> None:
    ident = domainxml.Identity(namespace="default", name="a", uid="u")
    assert orphans.judge(obj, ident, "node-1") == verdict
