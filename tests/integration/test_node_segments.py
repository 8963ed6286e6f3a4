"""The node's shared segment set in a real network namespace: a managed network's bridge
is created on demand, kept while the VRF loop needs it, deleted when neither loop does,
and found again by a restarted agent."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from kubevisor.agent import segmenting, segments
from kubevisor.agent.kernel import bridges
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

NETWORKS = {"default": "kvbr0", "red": "kvn-red"}
MANAGED = frozenset({"red"})


@pytest.fixture
def netns() -> Iterator[str]:
    testing.require_root("to create a network namespace")
    testing.require_tools("ip")
    name = f"kvseg-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _links(ns: str) -> str:
    return subprocess.run(
        ["ip", "-n", ns, "-d", "link", "show"], capture_output=True, text=True, check=True
    ).stdout


def test_bridge_only_a_vrf_uses_survives_vm_pruning(netns: str) -> None:
    red = segments.segment_of("red", None, NETWORKS, MANAGED)

    async def scenario() -> None:
        shared = segmenting.NodeSegments(
            bridges.Segments(netns=netns),
            users=(segmenting.VMS, segmenting.VRFS),
            networks=NETWORKS,
            managed=MANAGED,
        )
        state = await shared.ensure(red)  # the VRF loop sets it up
        assert not state.uplinked and "local to this node" in state.message
        assert "kvn-red" in _links(netns) and "kubevisor:net:red" in _links(netns)
        await shared.set_needed(segmenting.VMS, set())  # VM loop first: VRFs undeclared
        assert "kvn-red" in _links(netns)
        await shared.set_needed(segmenting.VRFS, {red})
        await shared.set_needed(segmenting.VMS, set())
        assert "kvn-red" in _links(netns), "pruned a bridge a VRF needs"
        await shared.set_needed(segmenting.VRFS, set())
        assert "kvn-red" not in _links(netns)

        # a restarted agent adopts the bridge an earlier one left and prunes it
        await shared.ensure(red)
        again = segmenting.NodeSegments(
            bridges.Segments(netns=netns), networks=NETWORKS, managed=MANAGED
        )
        await again.set_needed(segmenting.VMS, set())
        assert "kvn-red" not in _links(netns)

    asyncio.run(scenario())


def test_foreign_bridge_with_the_managed_name_is_left_alone(netns: str) -> None:
    subprocess.run(["ip", "-n", netns, "link", "add", "kvn-red", "type", "bridge"], check=True)

    async def scenario() -> None:
        shared = segmenting.NodeSegments(
            bridges.Segments(netns=netns), networks=NETWORKS, managed=MANAGED
        )
        await shared.set_needed(segmenting.VMS, set())

    asyncio.run(scenario())
    assert "kvn-red" in _links(netns)  # no alias of ours: never adopted, never deleted
