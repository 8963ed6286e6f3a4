"""Fixtures of the integration tier. Explicit, not autouse: a test names what it uses.

``bird_vrf`` and ``frr_vrf``: VRF "red" on a simulated netns node with a real supervisor
for its daemon (`kubevisor.devenv.vrfdaemons`); the node lives for the module, the VRF
for the test (its daemon stopped and the VRF removed after it).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from kubevisor.devenv import testing, vrfdaemons


@pytest.fixture(scope="module")
def daemon_node() -> Iterator[str]:
    """A simulated node namespace with segment bridge br-red (root needed)."""
    testing.require_root("to build network namespaces")
    with vrfdaemons.node_netns(f"kvd{os.getpid() % 100000}") as ns:
        yield ns


@pytest.fixture
async def bird_vrf(daemon_node: str) -> AsyncIterator[vrfdaemons.DaemonVRF]:
    """VRF red for a BIRD test (absent without root or BIRD)."""
    vrfdaemons.require("bird")
    async with vrfdaemons.daemon_vrf(daemon_node) as ctx:
        yield ctx


@pytest.fixture
async def frr_vrf(daemon_node: str) -> AsyncIterator[vrfdaemons.DaemonVRF]:
    """VRF red for an FRR test (absent without root or FRR)."""
    vrfdaemons.require("frr")
    async with vrfdaemons.daemon_vrf(daemon_node) as ctx:
        yield ctx
