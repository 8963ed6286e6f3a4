"""A sync never fights the controller: every docs/examples manifest applied with
server-side apply as Argo CD applies it (field manager ``argocd-controller``), the real
controller left to settle, then applied again: no conflict, no drift, and no manager but
``argocd-controller`` owns a field under ``spec``.

Real API server and the real controller; nodes are fake (one Lease this test writes, no
agent), so VMs are placed but never run here (running states are captured from e2e dev
clusters with ``python -m kubevisor.devenv.argocdhealth``, docs/argocd.md). Each settled
object is also judged by its Argo CD health
check in a real Lua runtime, and with ``KUBEVISOR_CAPTURE_HEALTH=1`` recorded into the
check's testdata/ (``devenv/argocdhealth.capture``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.api import groups, kinds, nodes, rebalancepolicies
from kubevisor.devenv import argocdhealth, testing

pytestmark = pytest.mark.integration

testing.require_module("lupa")

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "docs" / "examples").glob("*.yaml"))
NS = "gitops-test"
LEASE_NS = nodes.LEASE_NAMESPACE
G, V = groups.GROUP, groups.VERSION
MANAGER = "argocd-controller"
NODE = "gitops-node-1"
RUN = (
    "tests/integration/test_gitops_apply.py"
    " (real kube-apiserver + kubevisor-controller, fake node Lease, no agent)"
)


def _manifest(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


#: More than the examples: states a GitOps user meets and the health check must name.
EXTRA: tuple[dict[str, Any], ...] = (
    {
        "apiVersion": groups.API_VERSION,
        "kind": "VirtualMachine",
        "metadata": {"name": "too-big"},
        "spec": {"templateRef": {"name": "tiny"}, "memory": "4Ti"},
    },
    {
        "apiVersion": groups.API_VERSION,
        "kind": "VirtualMachine",
        "metadata": {"name": "halted"},
        "spec": {"templateRef": {"name": "tiny"}, "runStrategy": "Halted"},
    },
    {
        "apiVersion": groups.API_VERSION,
        "kind": "VirtualMachine",
        "metadata": {"name": "no-template"},
        "spec": {"templateRef": {"name": "does-not-exist"}},
    },
    {
        "apiVersion": groups.API_VERSION,
        "kind": "Migration",
        "metadata": {"name": "move-halted"},
        "spec": {"vmName": "halted"},
    },
)

#: Expected health per object once settled, with the testdata file it is captured as.
EXPECTED: dict[str, tuple[str, str]] = {
    "VMTemplate/tiny": ("Healthy", "healthy_ready"),
    "VirtualMachine/tiny-1": ("Progressing", "progressing_placed_no_agent"),
    "VirtualMachine/too-big": ("Degraded", "degraded_unschedulable"),
    "VirtualMachine/halted": ("Suspended", "suspended_halted"),
    "VirtualMachine/no-template": ("Degraded", "degraded_template_not_found"),
    # no agent reports back, so the backup stays Running
    "VMBackup/tiny-1-nightly": ("Progressing", "progressing_running"),
    # waits for the backup of the same VM
    "Migration/tiny-1-to-node-2": ("Progressing", "progressing_waiting_for_backup"),
    "Migration/move-halted": ("Degraded", "degraded_vm_not_running"),
    "VRF/blue": ("Progressing", "progressing_provisioning"),
    "DesktopPool/office": ("Progressing", "progressing_scaling"),
    "DesktopClaim/alice": ("Progressing", "progressing_waiting_for_desktop"),
    "StorageBackend/nas-1": ("Healthy", "healthy_accepted"),
    "VMBackupSchedule/tiny-1-nightly": ("Healthy", "healthy_active"),
    "RebalancePolicy/cluster": ("Healthy", "healthy_consolidated"),
}


class Env:
    def __init__(self, cluster: Any) -> None:
        import kubernetes

        self.k = kubernetes
        self.custom = kubernetes.client.CustomObjectsApi(cluster.api)
        self.core = kubernetes.client.CoreV1Api(cluster.api)
        self.coord = kubernetes.client.CoordinationV1Api(cluster.api)

    def _where(self, kind: kinds.Kind) -> tuple[Any, ...]:
        return () if kind.scope == "Cluster" else (NS,)

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply without force, as Argo CD's ServerSideApply=true does."""
        kind = kinds.by_kind(manifest["kind"])
        body = copy.deepcopy(manifest)
        if kind.scope != "Cluster":
            body["metadata"]["namespace"] = NS
        name = body["metadata"]["name"]
        args = (G, V, *self._where(kind), kind.plural, name, body)
        patch = (
            self.custom.patch_cluster_custom_object
            if kind.scope == "Cluster"
            else self.custom.patch_namespaced_custom_object
        )
        out: dict[str, Any] = patch(
            *args, field_manager=MANAGER, _content_type="application/apply-patch+yaml"
        )
        return out

    def get(self, kind_name: str, name: str) -> dict[str, Any] | None:
        kind = kinds.by_kind(kind_name)
        try:
            if kind.scope == "Cluster":
                got = self.custom.get_cluster_custom_object(G, V, kind.plural, name)
            else:
                got = self.custom.get_namespaced_custom_object(G, V, NS, kind.plural, name)
        except self.k.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(got)

    def delete(self, kind_name: str, name: str) -> None:
        kind = kinds.by_kind(kind_name)
        try:
            if kind.scope == "Cluster":
                self.custom.delete_cluster_custom_object(G, V, kind.plural, name)
            else:
                self.custom.delete_namespaced_custom_object(G, V, NS, kind.plural, name)
        except self.k.client.ApiException as exc:
            if exc.status != 404:
                raise

    def list_ns(self, plural: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.custom.list_namespaced_custom_object(G, V, NS, plural)[
            "items"
        ]
        return items


MANIFESTS = [*(_manifest(p) for p in EXAMPLES), *EXTRA]


def _key(manifest: dict[str, Any]) -> str:
    return f"{manifest['kind']}/{manifest['metadata']['name']}"


def _cleanup(env: Env) -> None:
    for manifest in reversed(MANIFESTS):
        env.delete(manifest["kind"], manifest["metadata"]["name"])
    for plural in ("desktopclaims", "virtualmachines", "desktoppools"):
        for obj in env.list_ns(plural):
            env.delete(obj["kind"], obj["metadata"]["name"])
    testing.wait_for(
        lambda: (
            all(env.get(m["kind"], m["metadata"]["name"]) is None for m in MANIFESTS)
            and not env.list_ns("virtualmachines")
        ),
        timeout=60,
        what="every applied object (and the pool's desktops) gone",
    )


@pytest.fixture(scope="module")
def env(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(cluster)
    for ns in (NS, LEASE_NS):
        testing.ensure_namespace(e.core, ns)
    if e.get("RebalancePolicy", rebalancepolicies.NAME) is not None:
        pytest.fail("a RebalancePolicy 'cluster' is left over from another test")
    lease = testing.fake_node_lease(
        NODE,
        labels={"kubevisor.io/vrf-blue": "true"},
        capacity={"cpu": 64, "memoryBytes": 64 * 2**30, "gpus": 0},
    )
    e.coord.create_namespaced_lease(LEASE_NS, lease)
    logfile = tmp_path_factory.mktemp("gitops") / "controller.log"
    try:
        with testing.running_controller(cluster.kubeconfig, log=logfile, namespaces=[NS]):
            try:
                yield e
            finally:
                _cleanup(e)
    finally:
        e.coord.delete_namespaced_lease(NODE, LEASE_NS)


def _settled(env: Env) -> dict[str, dict[str, Any]]:
    """Every object, each with the current generation observed where the controller
    stamps it; the objects by key (empty while one is missing or behind)."""
    out: dict[str, dict[str, Any]] = {}
    for manifest in MANIFESTS:
        obj = env.get(manifest["kind"], manifest["metadata"]["name"])
        if obj is None:
            return {}
        seen = (obj.get("status") or {}).get("observedGeneration")
        if seen is not None and seen != obj["metadata"]["generation"]:
            return {}
        out[_key(manifest)] = obj
    return out


def _describe(env: Env) -> dict[str, Any]:
    """Where each object stands (what a timeout shows)."""
    out: dict[str, Any] = {}
    for manifest in MANIFESTS:
        obj = env.get(manifest["kind"], manifest["metadata"]["name"]) or {}
        status = obj.get("status") or {}
        out[_key(manifest)] = (
            status.get("phase"),
            status.get("observedGeneration"),
            (obj.get("metadata") or {}).get("generation"),
            argocdhealth.evaluate(manifest["kind"], obj) if obj else None,
        )
    return out


Judged = tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]


def _judged(env: Env) -> Judged | None:
    """The settled objects and their health checks' verdicts, once every verdict is the
    expected one; None before."""
    objs = _settled(env)
    if not objs:
        return None
    verdicts = {key: argocdhealth.evaluate(obj["kind"], obj) for key, obj in objs.items()}
    if any(v["status"] != EXPECTED[k][0] for k, v in verdicts.items()):
        return None
    return objs, verdicts


def _contains(live: Any, applied: Any) -> bool:
    """Whether every field of ``applied`` has the same value in ``live`` (defaults the
    server added beside them are fine)."""
    if isinstance(applied, dict):
        return isinstance(live, dict) and all(
            k in live and _contains(live[k], v) for k, v in applied.items()
        )
    if isinstance(applied, list):
        return (
            isinstance(live, list)
            and len(live) == len(applied)
            and all(_contains(a, b) for a, b in zip(live, applied, strict=True))
        )
    return bool(live == applied)


def test_apply_settle_reapply_no_conflict_no_drift(env: Env) -> None:
    # All at once, as one Argo CD sync without waves applies them.
    first = {_key(m): env.apply(m) for m in MANIFESTS}
    assert set(first) == set(EXPECTED)

    settled, verdicts = testing.wait_for(
        lambda: _judged(env),
        timeout=60,
        what="every object settled at its expected health",
        every=0.5,
        show=lambda: _describe(env),
    )
    for key, obj in settled.items():
        argocdhealth.capture(obj, EXPECTED[key][1], run=RUN, expected=verdicts[key])

    # Applied again, unchanged, without force: a field another manager took would be a
    # 409 conflict here; a spec the controller rewrote would bump the generation.
    again = {_key(m): env.apply(m) for m in MANIFESTS}
    for manifest in MANIFESTS:
        key = _key(manifest)
        live = again[key]
        assert live["metadata"]["generation"] == settled[key]["metadata"]["generation"], key
        assert live["spec"] == settled[key]["spec"], f"{key}: spec drifted"
        assert _contains(live["spec"], manifest["spec"]), f"{key}: applied fields changed"
        for entry in live["metadata"].get("managedFields") or []:
            fields = entry.get("fieldsV1") or {}
            if entry.get("manager") != MANAGER:
                assert "f:spec" not in fields, (
                    f"{key}: manager {entry.get('manager')} owns spec fields "
                    f"{sorted(fields['f:spec'])}"
                )
    assert {k: v["status"] for k, v in verdicts.items()} == {k: e[0] for k, e in EXPECTED.items()}
