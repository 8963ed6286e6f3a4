"""Shared fixtures. Explicit, not autouse: a test names what it depends on."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubevisor.devenv import controlplane


@dataclass(frozen=True)
class Cluster:
    """A running real kube-apiserver + etcd with the kubevisor CRDs installed."""

    kubeconfig: Path
    server: str
    api: object  # kubernetes.client.ApiClient (typed loosely: the client ships no stubs)
    kubectl: Path


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """Start the control plane once per test session; nothing is left running afterwards."""
    import kubernetes

    try:
        bin_dir = controlplane.binaries_dir(build=os.environ.get("KUBEVISOR_BUILD", "1") == "1")
    except controlplane.ControlPlaneError as exc:
        pytest.skip(f"no control plane binaries: {exc}")
    state = Path(tempfile.mkdtemp(prefix="kubevisor-cp-"))
    cp = controlplane.ControlPlane(state_dir=state, bin_dir=bin_dir)
    atexit.register(cp.stop)  # also when the session dies before fixture teardown
    try:
        cp.start()
        cp.install_crds()
        api = kubernetes.config.new_client_from_config(config_file=str(cp.kubeconfig))
        yield Cluster(kubeconfig=cp.kubeconfig, server=cp.server, api=api, kubectl=cp.kubectl)
        api.close()
    finally:
        cp.stop()
        shutil.rmtree(state, ignore_errors=True)
