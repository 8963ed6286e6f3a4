"""Fixtures of the integration tier beyond ``cluster`` (which the plugin provides)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kubevisor.devenv import testing

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
