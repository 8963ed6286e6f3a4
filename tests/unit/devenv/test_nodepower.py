"""The local cluster's power switch: which simulated libvirtds to stop and start."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.api import rebalancepolicies
from kubevisor.devenv import nodepower

pytestmark = pytest.mark.unit


def node(name: str, status: str | None) -> dict[str, Any]:
    conds = [] if status is None else [{"type": rebalancepolicies.NODE_POWER_OFF, "status": status}]
    return {"metadata": {"name": name}, "status": {"conditions": conds}}


def test_powered_off_reads_only_true_power_off_conditions() -> None:
    objs = [node("a", "True"), node("b", "False"), node("c", None), {"metadata": {"name": "d"}}]
    assert rebalancepolicies.powered_off(objs) == frozenset({"a"})


@pytest.mark.parametrize(
    ("marked", "stopped", "stop", "start"),
    [
        (set(), set(), (), ()),
        ({"a"}, set(), ("a",), ()),  # marked: stop it
        ({"a"}, {"a"}, (), ()),  # already stopped: nothing
        (set(), {"a"}, (), ("a",)),  # woken: start it again
        ({"x"}, set(), (), ()),  # not one of this cluster's nodes
        ({"b"}, {"a"}, ("b",), ("a",)),
    ],
)
def test_decide(
    marked: set[str], stopped: set[str], stop: tuple[str, ...], start: tuple[str, ...]
) -> None:
    switch = nodepower.decide(["a", "b"], frozenset(marked), frozenset(stopped))
    assert (switch.stop, switch.start) == (stop, start)
