"""Fixtures of the integration tier beyond ``cluster`` (which the plugin provides).
Explicit, not autouse: a test names what it uses.

``helm``: the pinned helm binary. ``bird_vrf`` and ``frr_vrf``: VRF "red" on a simulated
netns node with a real supervisor for its daemon (`kubevisor.devenv.vrfdaemons`); the
node lives for the module, the VRF for the test (its daemon stopped and the VRF removed
after it).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubevisor.devenv import testing, vrfdaemons

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def helm() -> Path:
    """The pinned helm binary from hack/build-helm.sh (built on first use; the script
    returns at once when the pinned version is cached)."""
    if os.environ.get("KUBEVISOR_BUILD", "1") != "1":
        cache = Path(os.environ.get("KUBEVISOR_CACHE", "/var/cache/kubevisor"))
        cached = sorted(cache.glob("helm/v*/helm"))
        if not cached:
            testing.absent("helm is not built and KUBEVISOR_BUILD=0: run hack/build-helm.sh")
        return cached[-1]
    proc = subprocess.run(
        [str(ROOT / "hack" / "build-helm.sh")], capture_output=True, text=True, timeout=1800
    )
    # a build that fails is an error of the suite's setup: fail, never skip
    assert proc.returncode == 0, f"hack/build-helm.sh failed: {proc.stderr[-2000:]}"
    return Path(proc.stdout.strip().splitlines()[-1])


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
