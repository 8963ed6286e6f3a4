"""The Helm chart against a real API server with real RBAC.

helm lints and renders the chart; the API server accepts every rendered object
(server-side dry run, so admission and schema checks run); then the chart's
ServiceAccounts, ClusterRoles, Roles and bindings are installed for real and each
component runs with a token of its own ServiceAccount: the real controller reconciles a
VM (template, placement) and a VRF, a real agent heartbeat creates and renews its Lease,
and the agent's status writes go through. Whatever the roles lack shows up as a 403 in
the controller log or a failed write. ``kubectl auth can-i`` pins what each account may
and may not do, so a role that grows by accident fails here too.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.api import groups
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubevisor"
RELEASE = "kvhelm"
NS = "kvhelm-test"  # the release namespace, and so the Lease namespace
CONTROLLER_SA = f"{RELEASE}-kubevisor-controller"
AGENT_SA = f"{RELEASE}-kubevisor-agent"
NODE = "kvhelm-node"
SELECT = {"kvhelm": "yes"}
G, V = groups.GROUP, groups.VERSION
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
#: An RBAC denial in a log: an HTTP 403 (not the milliseconds of a timestamp such as
#: ``05:40:58,403``), or the API server's and kopf's words for it.
FORBIDDEN = re.compile(r"(?<![\d,.:])403(?!\d)|Forbidden|forbidden|Not enough permissions")


def _wait(predicate: Callable[[], Any], *, timeout: float = 60, what: str) -> Any:
    return testing.wait_for(predicate, timeout=timeout, what=what)


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture(scope="module")
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
def rendered(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``helm template`` of the chart with its CRDs, as one multi-document file."""
    proc = _run([str(helm), "template", RELEASE, str(CHART), "--namespace", NS, "--include-crds"])
    assert proc.returncode == 0, proc.stderr
    out = tmp_path_factory.mktemp("helm") / "rendered.yaml"
    out.write_text(proc.stdout)
    return out


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@dataclass(frozen=True)
class Installed:
    """The chart's RBAC objects applied for real in ``NS``."""

    cluster: Any
    rbac: Path

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run([str(self.cluster.kubectl), f"--kubeconfig={self.cluster.kubeconfig}", *args])

    def token_kubeconfig(self, sa: str, path: Path) -> Path:
        """A kubeconfig that authenticates as ``sa`` with a TokenRequest token."""
        import kubernetes

        core = kubernetes.client.CoreV1Api(self.cluster.api)
        token = core.create_namespaced_service_account_token(
            sa, NS, {"spec": {"expirationSeconds": 3600}}
        ).status.token
        admin = yaml.safe_load(Path(self.cluster.kubeconfig).read_text())
        cluster = admin["clusters"][0]["cluster"]
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "kv", "cluster": cluster}],
                    "users": [{"name": sa, "user": {"token": token}}],
                    "contexts": [{"name": sa, "context": {"cluster": "kv", "user": sa}}],
                    "current-context": sa,
                }
            )
        )
        return path


def _ensure_namespace(api: Any, name: str) -> None:
    import kubernetes

    try:
        kubernetes.client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:
            raise


@pytest.fixture(scope="module")
def installed(
    cluster: Any, rendered: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    _ensure_namespace(cluster.api, NS)
    rbac = tmp_path_factory.mktemp("rbac") / "rbac.yaml"
    rbac.write_text(yaml.safe_dump_all([d for d in _docs(rendered) if d["kind"] in RBAC_KINDS]))
    inst = Installed(cluster=cluster, rbac=rbac)
    proc = inst.kubectl("apply", "-f", str(rbac))
    assert proc.returncode == 0, proc.stderr
    try:
        yield inst
    finally:
        # Cluster-scoped roles would outlive the session's namespace: remove them all.
        inst.kubectl("delete", "--ignore-not-found", "-f", str(rbac))


def test_helm_lint(helm: Path) -> None:
    proc = _run([str(helm), "lint", str(CHART)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_template_renders_every_part(rendered: Path) -> None:
    docs = _docs(rendered)
    kinds = sorted({d["kind"] for d in docs})
    print(f"rendered {len(docs)} objects: {kinds}")
    assert {"CustomResourceDefinition", "Deployment", "DaemonSet"} <= set(kinds)
    assert RBAC_KINDS <= set(kinds)
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    ds = by_kind[("DaemonSet", f"{RELEASE}-kubevisor-agent")]["spec"]["template"]["spec"]
    assert ds["hostNetwork"] is True
    agent = ds["containers"][0]
    assert agent["command"] == ["kubevisor-agent"]
    assert "--node=$(NODE_NAME)" in agent["args"]
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["KUBEVISOR_LEASE_NAMESPACE"]["value"] == NS
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/run/netns"]["mountPropagation"] == "Bidirectional"
    assert mounts["/lib/modules"]["readOnly"] is True
    assert {"/run/libvirt", "/var/lib/kubevisor", "/sys/fs/cgroup"} <= set(mounts)
    dep = by_kind[("Deployment", f"{RELEASE}-kubevisor-controller")]["spec"]
    assert dep["replicas"] == 1
    ctl = dep["template"]["spec"]["containers"][0]
    assert ctl["command"] == ["kubevisor-controller"]
    assert {e["name"]: e.get("value") for e in ctl["env"]}["KUBEVISOR_LEASE_NAMESPACE"] == NS


def test_every_object_passes_server_dry_run(cluster: Any, rendered: Path) -> None:
    _ensure_namespace(cluster.api, NS)
    proc = _run(
        [
            str(cluster.kubectl),
            f"--kubeconfig={cluster.kubeconfig}",
            "apply",
            "--dry-run=server",
            "-f",
            str(rendered),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "(server dry run)" in line]
    print("\n".join(lines))
    assert len(lines) == len(_docs(rendered))


@contextlib.contextmanager
def _agent_heartbeat(kubeconfig: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The agent's real Lease heartbeat, as the agent's ServiceAccount, in a process that
    reads the Lease namespace from KUBEVISOR_LEASE_NAMESPACE like the DaemonSet's does."""
    code = textwrap.dedent(
        f"""
        import asyncio
        from kubernetes_asyncio import client, config
        from kubevisor.agent.kube import leases
        from kubevisor.api import nodes

        async def main():
            await config.load_kube_config(config_file={str(kubeconfig)!r})
            async with client.ApiClient() as api:
                capacity = nodes.Capacity(cpu=8, memory_bytes=8 * 2**30)
                hb = leases.Heartbeat(api, node={NODE!r}, labels={SELECT!r}, capacity=capacity)
                await hb.renew_once()
                await hb.renew_once()
                print("lease namespace", nodes.LEASE_NAMESPACE, "renewals", hb.renewals, flush=True)
                await hb.run()

        asyncio.run(main())
        """
    )
    env = {**os.environ, "KUBEVISOR_LEASE_NAMESPACE": NS, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, env=env
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_controller_and_agent_work_under_their_roles(
    installed: Installed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kubernetes

    admin_custom = kubernetes.client.CustomObjectsApi(installed.cluster.api)
    core = kubernetes.client.CoreV1Api(installed.cluster.api)
    coord = kubernetes.client.CoordinationV1Api(installed.cluster.api)
    controller_cfg = installed.token_kubeconfig(CONTROLLER_SA, tmp_path / "controller.kubeconfig")
    agent_cfg = installed.token_kubeconfig(AGENT_SA, tmp_path / "agent.kubeconfig")
    agent_api = kubernetes.config.new_client_from_config(config_file=str(agent_cfg))
    agent_custom = kubernetes.client.CustomObjectsApi(agent_api)
    suffix = uuid.uuid4().hex[:6]
    tmpl, vm, lost, vrf = f"t-{suffix}", f"vm-{suffix}", f"lost-{suffix}", f"vrf-{suffix}"

    def get(plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = admin_custom.get_namespaced_custom_object(G, V, NS, plural, name)
        return obj

    def cond(plural: str, name: str, type_: str) -> dict[str, Any]:
        for c in (get(plural, name).get("status") or {}).get("conditions") or []:
            if c["type"] == type_:
                return dict(c)
        return {}

    def create(plural: str, kind: str, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": groups.API_VERSION, "kind": kind, "metadata": {"name": name}}
        admin_custom.create_namespaced_custom_object(G, V, NS, plural, {**body, "spec": spec})

    agent_log = tmp_path / "agent-heartbeat.log"
    controller_log = tmp_path / "controller.log"
    monkeypatch.setenv("KUBEVISOR_LEASE_NAMESPACE", NS)
    try:
        with _agent_heartbeat(agent_cfg, agent_log) as hb:
            _wait(
                lambda: hb.poll() is not None or "renewals 2" in agent_log.read_text(),
                what="agent heartbeat: Lease created and renewed",
            )
            assert hb.poll() is None, agent_log.read_text()
            assert f"lease namespace {NS}" in agent_log.read_text()
            lease = coord.read_namespaced_lease(NODE, NS)
            assert lease.metadata.labels["kvhelm"] == "yes"

            create(
                "vmtemplates",
                "VMTemplate",
                tmpl,
                {
                    "cpu": {"cores": 1},
                    "memory": "256Mi",
                    "disks": [{"name": "root", "image": "tiny", "size": "1Gi"}],
                    "nics": [{"name": "eth0", "network": "default"}],
                },
            )
            create("virtualmachines", "VirtualMachine", vm, {"templateRef": {"name": tmpl}})
            create("virtualmachines", "VirtualMachine", lost, {"templateRef": {"name": "none"}})
            create(
                "vrfs",
                "VRF",
                vrf,
                {
                    "nodeSelector": SELECT,
                    "interfaces": [
                        {"name": "h0", "network": f"kvh{suffix}", "addresses": ["10.9.0.1/24"]}
                    ],
                },
            )
            with testing.running_controller(controller_cfg, log=controller_log):
                # The controller: template resolved, VM placed on the agent's node.
                node = _wait(
                    lambda: (get("virtualmachines", vm).get("status") or {}).get("nodeName"),
                    what="VM placed under the controller's role",
                )
                assert node == NODE
                assert cond("virtualmachines", vm, "Scheduled")["status"] == "True"
                assert cond("virtualmachines", vm, "TemplateResolved")["status"] == "True"
                _wait(
                    lambda: (get("vmtemplates", tmpl).get("status") or {}).get("phase") == "Ready",
                    what="template status",
                )
                # An Event posted under the controller's role.
                missing = _wait(
                    lambda: cond("virtualmachines", lost, "TemplateResolved"),
                    what="TemplateNotFound condition",
                )
                assert missing["reason"] == "TemplateNotFound"
                _wait(
                    lambda: [
                        e
                        for e in core.list_namespaced_event(
                            NS, field_selector=f"involvedObject.name={lost}"
                        ).items
                        if e.reason == "TemplateNotFound"
                    ],
                    what="TemplateNotFound Event",
                )
                # The VRF: table allocated for the one selected node.
                table = _wait(
                    lambda: (get("vrfs", vrf).get("status") or {}).get("tableAllocated"),
                    what="VRF table allocated",
                )
                assert cond("vrfs", vrf, "Ready"), "VRF has no Ready condition"

                # The agent's status writes, under the agent's role, read back by the
                # controller: the VRF's per-node entry makes it ready on 1/1 nodes.
                agent_custom.patch_namespaced_custom_object_status(
                    G, V, NS, "virtualmachines", vm,
                    {"apiVersion": groups.API_VERSION, "kind": "VirtualMachine",
                     "metadata": {"name": vm, "namespace": NS},
                     "status": {"phase": "Running"}},
                    field_manager="kubevisor-agent", force=True,
                    _content_type="application/apply-patch+yaml",
                )  # fmt: skip
                entry = {
                    "backend": "netns",
                    "table": table,
                    "interfaces": ["h0"],
                    "routesInstalled": 0,
                    "ready": True,
                    "message": "realized",
                    "observedGeneration": 1,
                    "lastSyncTime": "2025-01-01T00:00:00Z",
                }
                agent_custom.patch_namespaced_custom_object_status(
                    G, V, NS, "vrfs", vrf, {"status": {"nodes": {NODE: entry}}},
                    field_manager=f"kubevisor-agent-{NODE}",
                    _content_type="application/merge-patch+json",
                )  # fmt: skip
                _wait(
                    lambda: (get("vrfs", vrf).get("status") or {}).get("readyNodes") == "1/1",
                    what="VRF ready on 1/1 nodes",
                )
                assert get("virtualmachines", vm)["status"]["phase"] == "Running"
            assert hb.poll() is None, agent_log.read_text()
    finally:
        agent_api.close()
        for plural, name in (
            ("virtualmachines", vm),
            ("virtualmachines", lost),
            ("vrfs", vrf),
            ("vmtemplates", tmpl),
        ):
            with contextlib.suppress(kubernetes.client.ApiException):
                admin_custom.patch_namespaced_custom_object(
                    G, V, NS, plural, name, {"metadata": {"finalizers": None}}
                )
            with contextlib.suppress(kubernetes.client.ApiException):
                admin_custom.delete_namespaced_custom_object(G, V, NS, plural, name)
        with contextlib.suppress(kubernetes.client.ApiException):
            coord.delete_namespaced_lease(NODE, NS)

    log = controller_log.read_text(errors="replace")
    denied = [line for line in log.splitlines() if FORBIDDEN.search(line)]
    assert not denied, "controller hit RBAC denials:\n" + "\n".join(denied[:20])
    hb_denied = FORBIDDEN.findall(agent_log.read_text())
    assert not hb_denied, agent_log.read_text()


# (verb, resource, namespace or "*" for all namespaces, extra kubectl args, allowed?)
Check = tuple[str, str, str, tuple[str, ...], bool]

AGENT_CHECKS: list[Check] = [
    ("list", "virtualmachines.kubevisor.io", "*", (), True),
    ("watch", "virtualmachines.kubevisor.io", "*", (), True),
    ("get", "virtualmachines.kubevisor.io", "default", (), True),
    ("patch", "virtualmachines.kubevisor.io", "default", (), True),  # its finalizer
    ("patch", "virtualmachines.kubevisor.io", "default", ("--subresource=status",), True),
    ("list", "vrfs.kubevisor.io", "*", (), True),
    ("watch", "vrfs.kubevisor.io", "*", (), True),
    ("patch", "vrfs.kubevisor.io", "default", ("--subresource=status",), True),
    ("create", "leases.coordination.k8s.io", NS, (), True),
    ("get", "leases.coordination.k8s.io", NS, (), True),
    ("update", "leases.coordination.k8s.io", NS, (), True),
    ("patch", "leases.coordination.k8s.io", NS, (), True),
    ("create", "events", "default", (), True),
    ("get", "secrets", "default", (), True),  # VNC passwords by name
    # and not more:
    ("delete", "virtualmachines.kubevisor.io", "default", (), False),
    ("create", "virtualmachines.kubevisor.io", "default", (), False),
    ("patch", "vrfs.kubevisor.io", "default", (), False),
    ("patch", "vmtemplates.kubevisor.io", "default", (), False),
    ("create", "leases.coordination.k8s.io", "default", (), False),
    ("delete", "leases.coordination.k8s.io", NS, (), False),
    ("list", "secrets", "default", (), False),
    ("create", "secrets", "default", (), False),
    ("update", "secrets", "default", (), False),
    ("patch", "secrets", "default", (), False),
    ("delete", "secrets", "default", (), False),
    ("create", "pods", "default", (), False),
    ("create", "namespaces", "", (), False),
]

CONTROLLER_CHECKS: list[Check] = [
    ("watch", "virtualmachines.kubevisor.io", "*", (), True),
    ("patch", "virtualmachines.kubevisor.io", "default", ("--subresource=status",), True),
    ("patch", "desktopclaims.kubevisor.io", "default", ("--subresource=status",), True),
    ("list", "leases.coordination.k8s.io", NS, (), True),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", "", (), True),
    ("create", "events", "default", (), True),
    # and not more:
    ("delete", "virtualmachines.kubevisor.io", "default", (), False),
    ("create", "virtualmachines.kubevisor.io", "default", (), False),
    ("list", "leases.coordination.k8s.io", "default", (), False),
    ("create", "leases.coordination.k8s.io", NS, (), False),
    ("get", "secrets", "default", (), False),
    ("create", "pods", "default", (), False),
    ("patch", "customresourcedefinitions.apiextensions.k8s.io", "", (), False),
]


def _can_i(installed: Installed, sa: str, check: Check) -> tuple[bool, str]:
    verb, resource, ns, extra, _ = check
    where = ["--all-namespaces"] if ns == "*" else (["-n", ns] if ns else [])
    proc = installed.kubectl(
        "auth", "can-i", verb, resource, *where, *extra,
        f"--as=system:serviceaccount:{NS}:{sa}",
    )  # fmt: skip
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stdout + proc.stderr
    return answer == "yes", answer


@pytest.mark.parametrize(
    "check", AGENT_CHECKS, ids=lambda c: f"{c[0]}-{c[1].split('.')[0]}{''.join(c[3])}-{c[2]}"
)
def test_agent_role(installed: Installed, check: Check) -> None:
    allowed, answer = _can_i(installed, AGENT_SA, check)
    assert allowed == check[4], f"agent can-i {check[:4]}: {answer}"


@pytest.mark.parametrize(
    "check",
    CONTROLLER_CHECKS,
    ids=lambda c: f"{c[0]}-{c[1].split('.')[0]}{''.join(c[3])}-{c[2]}",
)
def test_controller_role(installed: Installed, check: Check) -> None:
    allowed, answer = _can_i(installed, CONTROLLER_SA, check)
    assert allowed == check[4], f"controller can-i {check[:4]}: {answer}"
