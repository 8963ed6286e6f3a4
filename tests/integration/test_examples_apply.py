"""The manifests in docs/examples are accepted by a real API server, the server's
defaults agree with the models' defaults, and statuses the models produce are accepted
by the status subresource."""

from __future__ import annotations

import copy
import subprocess
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubevisor.api import conditions, groups, kinds, vrfs

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
NAMESPACE = "default"
PATHS = sorted(EXAMPLES.glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def objects(api: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


class Scoped:
    """create/get/patch_status/delete of one kind, in NAMESPACE or cluster-wide as the
    kind's scope says (StorageBackend is cluster-scoped)."""

    def __init__(self, api: Any, kind: kinds.Kind) -> None:
        self.api, self.kind = objects(api), kind
        self.where = (NAMESPACE,) if kind.scope == "Namespaced" else ()
        self.infix = "namespaced" if kind.scope == "Namespaced" else "cluster"

    def _call(self, verb: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.api, verb.format(self.infix))
        return method(groups.GROUP, groups.VERSION, *self.where, self.kind.plural, *args, **kwargs)

    def create(self, data: dict[str, Any], **kwargs: Any) -> Any:
        return self._call("create_{}_custom_object", data, **kwargs)

    def get(self, name: str) -> Any:
        return self._call("get_{}_custom_object", name)

    def patch_status(self, name: str, body: dict[str, Any]) -> Any:
        return self._call("patch_{}_custom_object_status", name, body)

    def delete(self, name: str) -> Any:
        return self._call("delete_{}_custom_object", name)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_example_accepted_by_dry_run(cluster: Any, path: Path) -> None:
    data = load(path)
    kind = kinds.by_kind(data["kind"])
    returned = Scoped(cluster.api, kind).create(data, dry_run="All")
    assert isinstance(returned, dict)
    assert returned["metadata"]["name"] == data["metadata"]["name"]
    # Server-side defaults fill the same values pydantic does.
    assert kind.model.model_validate(returned).spec == kind.model.model_validate(data).spec


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_example_create_and_delete(cluster: Any, path: Path) -> None:
    data = load(path)
    kind = kinds.by_kind(data["kind"])
    name = data["metadata"]["name"]
    api = Scoped(cluster.api, kind)
    api.create(data)
    try:
        stored = api.get(name)
        assert isinstance(stored, dict)
        assert stored["metadata"]["generation"] == 1
        kind.model.model_validate(stored)
    finally:
        api.delete(name)


def _status_for(kind: kinds.Kind) -> dict[str, Any]:
    """A status every kind's schema must accept: phase, a Ready condition, generation."""
    annotation = kind.status_model.model_fields["phase"].annotation
    phase_enum = next(a for a in typing.get_args(annotation) if a is not type(None))
    phase = next(iter(phase_enum))
    conds = conditions.set_condition(
        [],
        type=conditions.ConditionType.READY,
        status="False",
        reason=conditions.Reason.IN_PROGRESS,
        message="Just created.",
        generation=1,
        now=datetime.now(UTC),
    )
    status = {"phase": str(phase), "conditions": conds, "observedGeneration": 1}
    return kind.status_model.model_validate(status).to_json()


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_status_subresource_accepts_model_status(cluster: Any, path: Path) -> None:
    data = load(path)
    kind = kinds.by_kind(data["kind"])
    name = f"{data['metadata']['name']}-status"
    data["metadata"]["name"] = name
    api = Scoped(cluster.api, kind)
    api.create(data)
    try:
        status = _status_for(kind)
        api.patch_status(name, {"status": status})
        stored = api.get(name)
        parsed = kind.model.model_validate(stored)
        assert parsed.status is not None
        assert parsed.status.to_json() == status
    finally:
        api.delete(name)


def test_vrf_node_entries_merge_per_node(cluster: Any) -> None:
    """Two agents merge-patch their own key of status.nodes; neither erases the other."""
    data = load(EXAMPLES / "vrf.yaml")
    data["metadata"]["name"] = "blue-nodes"
    api = objects(cluster.api)
    plural = kinds.VRF.plural
    api.create_namespaced_custom_object(groups.GROUP, groups.VERSION, NAMESPACE, plural, data)
    try:
        for node in ("node-a", "node-b"):
            entry = vrfs.VRFNodeStatus(
                backend="netns",
                table=100,
                interfaces=["blue-up", "blue-v200"],
                routes_installed=3,
                ready=True,
                message="",
                usage=vrfs.VRFUsage(cpu_seconds=0.25, memory_bytes=4096),
                observed_generation=1,
                last_sync_time=datetime(2025, 1, 1, tzinfo=UTC),
            )
            api.patch_namespaced_custom_object_status(
                groups.GROUP,
                groups.VERSION,
                NAMESPACE,
                plural,
                "blue-nodes",
                {"status": {"nodes": {node: entry.to_json()}}},
            )
        stored = vrfs.VRF.model_validate(
            api.get_namespaced_custom_object(
                groups.GROUP, groups.VERSION, NAMESPACE, plural, "blue-nodes"
            )
        )
        assert stored.status is not None
        assert sorted(stored.status.nodes) == ["node-a", "node-b"]
        assert stored.status.nodes["node-b"].usage == vrfs.VRFUsage(
            cpu_seconds=0.25, memory_bytes=4096
        )
    finally:
        api.delete_namespaced_custom_object(
            groups.GROUP, groups.VERSION, NAMESPACE, plural, "blue-nodes"
        )


def test_kubectl_category_and_short_names(cluster: Any) -> None:
    """``kubectl get kubevisor`` lists every kind; short names resolve."""
    data = copy.deepcopy(load(EXAMPLES / "vm.yaml"))
    data["metadata"]["name"] = "kubectl-vm"
    api = objects(cluster.api)
    plural = kinds.VIRTUALMACHINE.plural
    api.create_namespaced_custom_object(groups.GROUP, groups.VERSION, NAMESPACE, plural, data)
    try:
        base = [str(cluster.kubectl), f"--kubeconfig={cluster.kubeconfig}", "-n", NAMESPACE]
        out = subprocess.run(
            [*base, "get", "kubevisor"], capture_output=True, text=True, check=True
        ).stdout
        assert "kubectl-vm" in out
        for kind in kinds.KINDS:
            for short in kind.short_names:
                subprocess.run([*base, "get", short], capture_output=True, check=True)
        wide = subprocess.run(
            [*base, "get", "kvvm", "kubectl-vm", "-o", "wide"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        header = wide.splitlines()[0].split()
        assert header[:5] == ["NAME", "PHASE", "NODE", "IP", "STRATEGY"]
        assert "Always" in wide
    finally:
        api.delete_namespaced_custom_object(
            groups.GROUP, groups.VERSION, NAMESPACE, plural, "kubectl-vm"
        )
