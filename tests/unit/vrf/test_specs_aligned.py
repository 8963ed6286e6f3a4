"""The agent's read-back TypedDicts (node entry, usage) use the API model's wire names."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from kubevisor.agent.vrfs import specs
from kubevisor.api import vrfrouting, vrfs

pytestmark = pytest.mark.unit


def _wire(model: type[BaseModel]) -> set[str]:
    return {f.alias or n for n, f in model.model_fields.items()}


@pytest.mark.parametrize(
    ("typed", "model"),
    [
        (specs.UsageStatus, vrfs.VRFUsage),
        (specs.DaemonStatus, vrfrouting.VRFDaemonStatus),
        (specs.SessionStatus, vrfrouting.VRFSession),
    ],
)
def test_keys_match_the_api_model(typed: Any, model: type[BaseModel]) -> None:
    assert set(typed.__annotations__) == _wire(model)


def test_node_status_keys_are_api_fields() -> None:
    assert set(specs.NodeVRFStatus.__annotations__) <= _wire(vrfs.VRFNodeStatus)
