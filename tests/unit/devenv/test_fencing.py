"""Which lost simulated nodes the local cluster's fence step fences (devenv/fencing)."""

from __future__ import annotations

import pytest

from kubevisor.devenv import fencing

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("lost", "tainted", "off", "occupied", "fence"),
    [
        (["a"], set(), set(), set(), ["a"]),  # lost: fence it
        (["a"], {"a"}, set(), set(), []),  # already fenced
        (["a"], set(), {"a"}, set(), []),  # powered off by consolidation, empty: leave it
        (["a"], set(), {"a"}, {"a"}, ["a"]),  # powered off but a VM raced onto it: fence
        (["a", "b"], set(), {"b"}, {"a"}, ["a"]),
        ([], set(), {"b"}, set(), []),  # not lost: nothing, marked or not
    ],
)
def test_to_fence(
    lost: list[str], tainted: set[str], off: set[str], occupied: set[str], fence: list[str]
) -> None:
    got = fencing.to_fence(
        lost,
        tainted=frozenset(tainted),
        powered_off=frozenset(off),
        occupied=frozenset(occupied),
    )
    assert got == fence


def test_occupied_reads_node_names() -> None:
    vms = [{"status": {"nodeName": "a"}}, {"status": {}}, {}, {"status": {"nodeName": "b"}}]
    assert fencing.occupied(vms) == frozenset({"a", "b"})
