"""The local cluster registers a Node object per simulated node (what cordon acts on)."""

from __future__ import annotations

import pytest

from kubevisor.devenv import cluster

pytestmark = pytest.mark.unit


def test_node_object_names_the_node_and_its_hostname_label() -> None:
    assert cluster.node_object("node-1") == {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"}},
    }
