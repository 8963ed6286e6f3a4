"""pytest plugin with the ``cluster`` fixture: a real control plane per test session.

A plugin module (not only ``tests/conftest.py``) so that a test can run a nested pytest
session with ``-p kubevisor.devenv.pytest_plugin`` and check what that session leaves
behind.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubevisor.devenv import controlplane, testing


@dataclass(frozen=True)
class Cluster:
    """A running real kube-apiserver + etcd with the kubevisor CRDs installed."""

    kubeconfig: Path
    server: str
    api: Any
    """A ``kubernetes.client.ApiClient`` (sync, admin)."""
    kubectl: Path
    state_dir: Path


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """Start the control plane once per test session; nothing is left running afterwards.

    Teardown runs when tests fail too; ``atexit`` covers a session that ends before
    fixture teardown (e.g. KeyboardInterrupt).
    """
    import kubernetes

    build = os.environ.get("KUBEVISOR_BUILD", "1") == "1"
    try:
        bin_dir = controlplane.binaries_dir(build=build)
    except controlplane.ControlPlaneError as exc:
        if build:
            raise  # a failed build is an error, never a skip
        testing.absent(f"no control plane binaries and KUBEVISOR_BUILD=0: {exc}")
    state = Path(tempfile.mkdtemp(prefix="kubevisor-cp-"))
    cp = controlplane.ControlPlane(state_dir=state, bin_dir=bin_dir)
    atexit.register(cp.stop)
    try:
        cp.start()
        cp.install_crds()
        api = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(cp.kubeconfig)
        )
        try:
            yield Cluster(
                kubeconfig=cp.kubeconfig,
                server=cp.server,
                api=api,
                kubectl=cp.kubectl,
                state_dir=state,
            )
        finally:
            api.close()
    finally:
        cp.stop()
        shutil.rmtree(state, ignore_errors=True)
