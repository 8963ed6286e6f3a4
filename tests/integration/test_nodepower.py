"""The local cluster's power switch on a real simulated node: its libvirtd stops (virsh
can no longer reach it) and starts again (virsh reaches it, a new pid), and ``follow``
does the same from the Node condition the rebalancer writes (read through a stub kubectl
that prints the Node list: there is no API server in this test)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubevisor.api import rebalancepolicies
from kubevisor.devenv import nodelifecycle, nodepower, nodes, testing

pytestmark = pytest.mark.integration

CLUSTER = "kvrbpow"


def _reachable(node: nodes.SimNode) -> bool:
    return (
        subprocess.run(
            ["virsh", "-q", "-c", node.libvirt_uri, "uri"], capture_output=True, check=False
        ).returncode
        == 0
    )


@pytest.fixture(scope="module")
def node() -> Iterator[nodes.SimNode]:
    testing.require_root("simulated nodes (namespaces, mounts, libvirtd)")
    testing.require_tools("libvirtd", "virtlogd", "virsh", "nsenter")
    try:
        (created,) = nodes.create_cluster_nodes(CLUSTER, 1)
        yield created
    finally:
        nodes.destroy_cluster_nodes(CLUSTER)


def test_stop_and_start_libvirtd(node: nodes.SimNode) -> None:
    assert _reachable(node)
    nodepower.stop_libvirtd(node)
    assert not _reachable(node)
    nodepower.start_libvirtd(node)
    assert _reachable(node)
    pid = nodelifecycle._read_pid(node.state_dir / "run/libvirt/libvirtd.pid")
    assert pid and pid != node.libvirtd_pid


def test_follow_switches_on_the_node_condition(node: nodes.SimNode, tmp_path: Path) -> None:
    listing = tmp_path / "nodes.json"
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f"#!/bin/sh\ncat {listing}\n")
    kubectl.chmod(0o755)

    def say(status: str) -> None:
        cond = {"type": rebalancepolicies.NODE_POWER_OFF, "status": status}
        item = {"metadata": {"name": node.name}, "status": {"conditions": [cond]}}
        listing.write_text(json.dumps({"items": [item]}))

    stopped: set[str] = set()
    say("True")
    nodepower.follow(
        CLUSTER, tmp_path / "kubeconfig", kubectl=str(kubectl), every=0, rounds=1, stopped=stopped
    )
    assert not _reachable(node) and stopped == {node.name}
    say("False")
    nodepower.follow(
        CLUSTER, tmp_path / "kubeconfig", kubectl=str(kubectl), every=0, rounds=1, stopped=stopped
    )
    assert _reachable(node) and stopped == set()
