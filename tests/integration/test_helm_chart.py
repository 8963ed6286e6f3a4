"""The Helm chart against a real API server with real RBAC.

helm lints and renders the chart; the API server accepts every rendered object
(server-side dry run, so admission and schema checks run); then the chart's
ServiceAccounts, ClusterRoles, Roles and bindings are installed for real and each
component runs with a token of its own ServiceAccount: the real controller reconciles a
VM (template, placement) and a VRF, and the real ``kubevisor-agent`` (libvirt's test
driver, netlink in a namespace the test makes) keeps its Lease, runs the VM and realizes
the VRF, writing their status itself. Whatever the roles lack shows up as a 403 in a
log or a write that never arrives. ``kubectl auth can-i`` pins what each account may
and may not do, so a role that grows by accident fails here too.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
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
GATEWAY_SA = f"{RELEASE}-kubevisor-gateway"
NODE = "kvhelm-node"
SELECT = {"kvhelm": "yes"}
G, V = groups.GROUP, groups.VERSION
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
#: Node-bound admission: installed with the roles, so the agent runs under it.
ADMISSION_KINDS = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
#: An RBAC denial in a log: an HTTP 403 (not the milliseconds of a timestamp such as
#: ``05:40:58,403``), or the API server's and kopf's words for it.
FORBIDDEN = re.compile(r"(?<![\d,.:])403(?!\d)|Forbidden|forbidden|Not enough permissions")
#: Log records start with a timestamp; a record's continuation lines (kubernetes' "Reason:"
#: and "HTTP response body:") belong to it.
RECORD_START = re.compile(r"^\[\d{4}-\d\d-\d\d ", re.M)


def _denials(log: str) -> list[str]:
    """The log records that show an RBAC refusal. A namespace another test is deleting
    refuses new Events with 403 too ("is being terminated"): that record is not RBAC."""
    starts = [m.start() for m in RECORD_START.finditer(log)] or [0]
    if starts[0] != 0:
        starts.insert(0, 0)
    records = [log[a:b] for a, b in zip(starts, [*starts[1:], len(log)], strict=True)]
    return [r.strip() for r in records if FORBIDDEN.search(r) and "is being terminated" not in r]


def _wait(predicate: Callable[[], Any], *, timeout: float = 60, what: str) -> Any:
    return testing.wait_for(predicate, timeout=timeout, what=what)


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


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

    def token_kubeconfig(self, sa: str, path: Path, *, node: str | None = None) -> Path:
        """A kubeconfig that authenticates as ``sa`` with a TokenRequest token; with
        ``node``, the token is bound to a Pod of ``sa`` on that node (as a DaemonSet pod's
        projected token is), which node-bound admission requires of the agent."""
        import kubernetes

        core = kubernetes.client.CoreV1Api(self.cluster.api)
        spec: dict[str, Any] = {"expirationSeconds": 3600}
        if node is not None:
            pod = testing.node_bound_pod(core, NS, f"{sa}-{node}"[:63], sa=sa, node=node)
            spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", **pod}
        token = core.create_namespaced_service_account_token(sa, NS, {"spec": spec}).status.token
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
    applied = RBAC_KINDS | ADMISSION_KINDS
    rbac.write_text(yaml.safe_dump_all([d for d in _docs(rendered) if d["kind"] in applied]))
    inst = Installed(cluster=cluster, rbac=rbac)
    proc = inst.kubectl("apply", "-f", str(rbac))
    assert proc.returncode == 0, proc.stderr
    try:
        yield inst
    finally:
        # Cluster-scoped roles would outlive the session's namespace: remove them all.
        inst.kubectl("delete", "--ignore-not-found", "-f", str(rbac))
        # No kubelet: a graceful deletion of these Pods would never finish.
        inst.kubectl("delete", "pods", "-n", NS, "-l", testing.LABEL_NODE_BOUND_POD,
                     "--grace-period=0", "--force")  # fmt: skip


def test_helm_lint(helm: Path) -> None:
    proc = _run([str(helm), "lint", str(CHART)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_template_renders_every_part(rendered: Path) -> None:
    docs = _docs(rendered)
    kinds = sorted({d["kind"] for d in docs})
    print(f"rendered {len(docs)} objects: {kinds}")
    assert {"CustomResourceDefinition", "Deployment", "DaemonSet"} <= set(kinds)
    assert RBAC_KINDS | ADMISSION_KINDS <= set(kinds)
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
    # the VRF routing daemons' run directories outlive an agent restart
    assert "/run/kubevisor" in mounts
    dep = by_kind[("Deployment", f"{RELEASE}-kubevisor-controller")]["spec"]
    assert dep["replicas"] == 1
    ctl = dep["template"]["spec"]["containers"][0]
    assert ctl["command"] == ["kubevisor-controller"]
    assert {e["name"]: e.get("value") for e in ctl["env"]}["KUBEVISOR_LEASE_NAMESPACE"] == NS


def test_gateway_renders_as_a_deployment_with_a_service(rendered: Path) -> None:
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in _docs(rendered)}
    name = f"{RELEASE}-kubevisor-gateway"
    dep = by_kind[("Deployment", name)]["spec"]
    pod = dep["template"]["spec"]
    assert pod["serviceAccountName"] == GATEWAY_SA
    gw = pod["containers"][0]
    assert gw["command"] == ["kubevisor-gateway"]
    assert "--port=6080" in gw["args"]
    assert not any(a.startswith("--tls-") for a in gw["args"])  # no TLS Secret given
    assert gw["readinessProbe"]["httpGet"]["path"] == "/healthz"
    svc = by_kind[("Service", name)]["spec"]
    assert svc["selector"] == dep["selector"]["matchLabels"]
    assert svc["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]


def test_every_component_exposes_metrics_through_a_service(rendered: Path) -> None:
    """Each pod names its metrics port, its process listens there, and a Service per
    component selects the pods on it (the ServiceMonitors are in the next test)."""
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in _docs(rendered)}
    workloads = {
        "controller": ("Deployment", "--metrics-address=0.0.0.0"),
        "agent": ("DaemonSet", "--metrics-address=$(HOST_IP)"),  # host network: node IP
        "gateway": ("Deployment", "--metrics-address=0.0.0.0"),
    }
    for component, (kind, address) in workloads.items():
        spec = by_kind[(kind, f"{RELEASE}-kubevisor-{component}")]["spec"]
        container = spec["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert f"--metrics-port={ports['metrics']}" in container["args"], component
        assert address in container["args"], component
        svc = by_kind[("Service", f"{RELEASE}-kubevisor-{component}-metrics")]
        assert svc["spec"]["selector"] == spec["selector"]["matchLabels"], component
        assert svc["spec"]["ports"] == [
            {"name": "metrics", "port": ports["metrics"], "targetPort": "metrics"}
        ], component
    assert not [d for d in by_kind if d[0] == "ServiceMonitor"]  # off unless asked for


def test_service_monitors_behind_their_value(helm: Path) -> None:
    """``metrics.serviceMonitor.enabled`` adds one ServiceMonitor per component, each
    selecting only its metrics Service. Not in the server dry run: the
    monitoring.coreos.com CRD is prometheus-operator's and not installed here."""
    proc = _run(
        [str(helm), "template", RELEASE, str(CHART), "--namespace", NS,
         "--set", "metrics.serviceMonitor.enabled=true",
         "--set", "metrics.serviceMonitor.labels.release=prom"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert sorted(m["metadata"]["name"] for m in monitors) == [
        f"{RELEASE}-kubevisor-{c}" for c in ("agent", "controller", "gateway")
    ]
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "prom"
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
        want = monitor["spec"]["selector"]["matchLabels"]
        picked = [
            n for n, svc in services.items()
            if want.items() <= (svc["metadata"].get("labels") or {}).items()
        ]  # fmt: skip
        assert picked == [f"{monitor['metadata']['name']}-metrics"], (monitor, picked)
        # the endpoint names a port the selected Service has (by name, not number)
        ports = {p["name"] for p in services[picked[0]]["spec"]["ports"]}
        assert monitor["spec"]["endpoints"][0]["port"] in ports, (monitor, ports)


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


@pytest.fixture
def node_netns() -> Iterator[str]:
    """The agent's node: a network namespace the test makes, holding the node bridge kvbr0.
    The agent's netlink (managed bridges, the VRF netns backend's ``<netns>-vrf-*``
    namespaces) stays inside it and its children, never in the host's namespace."""
    testing.require_tools("ip")
    name = f"kvhelm-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "kvbr0", "type", "bridge"], check=True)
        yield name
    finally:
        listed = _run(["ip", "netns", "list"]).stdout.split()
        for ns in [n for n in listed if n.startswith(f"{name}-vrf-")] + [name]:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        # The netns backend's cgroup parent for this node (kubevisor-<netns>, cgroup v1
        # or v2), empty once the VRFs are gone: removed deepest first.
        root = Path("/sys/fs/cgroup")
        for parent in [root / f"kubevisor-{name}", *root.glob(f"*/kubevisor-{name}")]:
            if not parent.is_dir():
                continue
            for d in sorted(
                (p for p in parent.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            ):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                parent.rmdir()


def _managed_by(obj: dict[str, Any], manager: str, *path: str) -> bool:
    """Whether ``manager`` owns the field at ``path`` (``f:status``, ...) of ``obj``'s
    status subresource, by the API server's own managedFields."""
    for entry in obj["metadata"].get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("subresource") != "status":
            continue
        fields = entry.get("fieldsV1") or {}
        for key in path:
            fields = fields.get(key)
            if fields is None:
                break
        else:
            return True
    return False


def test_controller_and_agent_work_under_their_roles(
    installed: Installed,
    tmp_path: Path,
    node_netns: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real controller and the real ``kubevisor-agent`` (libvirt's test driver: a
    real driver with a fake hypervisor; netlink in the test's namespace), each with a token
    of its chart ServiceAccount: the agent's Lease, the VM's Running phase and the VRF's
    per-node entry are all the agent's own writes under the agent's role."""
    import kubernetes

    testing.require_module("libvirt")
    testing.require_tools("qemu-img")
    admin_custom = kubernetes.client.CustomObjectsApi(installed.cluster.api)
    core = kubernetes.client.CoreV1Api(installed.cluster.api)
    coord = kubernetes.client.CoordinationV1Api(installed.cluster.api)
    controller_cfg = installed.token_kubeconfig(CONTROLLER_SA, tmp_path / "controller.kubeconfig")
    agent_cfg = installed.token_kubeconfig(AGENT_SA, tmp_path / "agent.kubeconfig", node=NODE)
    suffix = uuid.uuid4().hex[:6]
    tmpl, vm, lost, vrf = f"t-{suffix}", f"vm-{suffix}", f"lost-{suffix}", f"vrf-{suffix}"
    segment = f"kvh{suffix}"  # a managed network: the agent makes its bridge kvn-kvh...

    def get(plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = admin_custom.get_namespaced_custom_object(G, V, NS, plural, name)
        return obj

    def gone(plural: str, name: str) -> bool:
        try:
            get(plural, name)
        except kubernetes.client.ApiException as exc:
            return exc.status == 404
        return False

    def cond(plural: str, name: str, type_: str) -> dict[str, Any]:
        for c in (get(plural, name).get("status") or {}).get("conditions") or []:
            if c["type"] == type_:
                return dict(c)
        return {}

    def create(plural: str, kind: str, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": groups.API_VERSION, "kind": kind, "metadata": {"name": name}}
        admin_custom.create_namespaced_custom_object(G, V, NS, plural, {**body, "spec": spec})

    def lease() -> Any:
        try:
            return coord.read_namespaced_lease(NODE, NS)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    images = tmp_path / "images"
    images.mkdir()
    made = _run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "tiny.qcow2"), "16M"])
    assert made.returncode == 0, made.stderr
    agent_bin = Path(sys.executable).with_name("kubevisor-agent")
    assert agent_bin.exists(), f"{agent_bin} missing: run hack/setup"
    argv = [
        str(agent_bin),
        f"--node={NODE}",
        f"--kubeconfig={agent_cfg}",
        "--libvirt-uri=test:///default",
        f"--netns={node_netns}",
        f"--state-dir={tmp_path / 'state'}",
        f"--image-dir={images}",
        *[f"--label={k}={v}" for k, v in SELECT.items()],
        "--network=default=kvbr0",
        f"--network={segment}",
        "--cpu=2",
        "--memory=4Gi",
        "--stop-timeout=5",
    ]
    agent_log = tmp_path / "agent.log"
    controller_log = tmp_path / "controller.log"
    monkeypatch.setenv("KUBEVISOR_LEASE_NAMESPACE", NS)
    try:
        # The Lease namespace from KUBEVISOR_LEASE_NAMESPACE, as the DaemonSet sets it.
        lease_ns = {"KUBEVISOR_LEASE_NAMESPACE": NS}
        with testing.running_process(argv, log=agent_log, what="agent", env=lease_ns) as agent:
            held = _wait(
                lambda: agent.poll() is not None or lease(), what="agent's Lease in the chart NS"
            )
            assert agent.poll() is None, agent_log.read_text()
            assert held.metadata.labels == {**SELECT, "kubevisor.io/agent": "true"}

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
                        {"name": "h0", "network": segment, "addresses": ["10.9.0.1/24"]}
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
                _wait(
                    lambda: (get("vrfs", vrf).get("status") or {}).get("tableAllocated"),
                    what="VRF table allocated",
                )
                assert cond("vrfs", vrf, "Ready"), "VRF has no Ready condition"

                # The agent, under the agent's role: the VM runs (domain defined and
                # started on the test driver, disk made from the base image), the phase
                # is the agent's write; the VRF is realized in the node's namespace, the
                # agent's per-node entry makes it ready on 1/1 nodes.
                running = _wait(
                    lambda: (
                        agent.poll() is not None
                        or (get("virtualmachines", vm).get("status") or {}).get("phase")
                        == "Running"
                    ),
                    what="VM Running, written by the agent",
                )
                assert agent.poll() is None and running, agent_log.read_text()
                assert _managed_by(
                    get("virtualmachines", vm), "kubevisor-agent", "f:status", "f:phase"
                ), get("virtualmachines", vm)["metadata"].get("managedFields")
                assert (tmp_path / "state" / "disks" / NS / vm / "root.qcow2").exists()
                _wait(
                    lambda: (get("vrfs", vrf).get("status") or {}).get("readyNodes") == "1/1",
                    what="VRF ready on 1/1 nodes",
                )
                obj = get("vrfs", vrf)
                assert obj["status"]["nodes"][NODE]["ready"] is True
                assert _managed_by(
                    obj, f"kubevisor-agent-{NODE}", "f:status", "f:nodes", f"f:{NODE}"
                ), obj["metadata"].get("managedFields")
                assert f"{node_netns}-vrf-" in _run(["ip", "netns", "list"]).stdout

                # Deleted while the agent runs: it removes the domain and its finalizer,
                # and the VRF's namespace.
                admin_custom.delete_namespaced_custom_object(G, V, NS, "virtualmachines", vm)
                _wait(lambda: gone("virtualmachines", vm), what="VM finalized by the agent")
                admin_custom.delete_namespaced_custom_object(G, V, NS, "vrfs", vrf)
                _wait(
                    lambda: f"{node_netns}-vrf-" not in _run(["ip", "netns", "list"]).stdout,
                    what="VRF namespace removed by the agent",
                )
            assert agent.poll() is None, agent_log.read_text()
    finally:
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

    denied = _denials(controller_log.read_text(errors="replace"))
    assert not denied, "controller hit RBAC denials:\n" + "\n".join(denied[:20])
    denied = _denials(agent_log.read_text(errors="replace"))
    assert not denied, "agent hit RBAC denials:\n" + "\n".join(denied[:20])


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
    ("list", "leases.coordination.k8s.io", NS, (), True),  # peers, for the RTT probe
    ("list", "migrations.kubevisor.io", "*", (), True),
    ("watch", "migrations.kubevisor.io", "*", (), True),
    ("patch", "migrations.kubevisor.io", "default", ("--subresource=status",), True),
    ("create", "events", "default", (), True),
    ("patch", "events", "default", (), True),  # a repeat bumps the first one's count
    ("get", "secrets", "default", (), True),  # VNC passwords by name
    # and not more:
    ("delete", "virtualmachines.kubevisor.io", "default", (), False),
    ("create", "virtualmachines.kubevisor.io", "default", (), False),
    ("patch", "vrfs.kubevisor.io", "default", (), False),
    ("patch", "vmtemplates.kubevisor.io", "default", (), False),
    ("create", "leases.coordination.k8s.io", "default", (), False),
    ("delete", "leases.coordination.k8s.io", NS, (), False),
    ("list", "leases.coordination.k8s.io", "default", (), False),
    ("patch", "migrations.kubevisor.io", "default", (), False),
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
    ("patch", "rebalancepolicies.kubevisor.io", "", ("--subresource=status",), True),
    ("create", "migrations.kubevisor.io", "default", (), True),  # drain and rebalancing
    ("patch", "nodes", "", (), True),  # Consolidate cordons the nodes it empties
    ("patch", "nodes", "", ("--subresource=status",), True),  # and their power condition
    ("list", "leases.coordination.k8s.io", NS, (), True),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", "", (), True),
    ("create", "events", "default", (), True),
    ("patch", "events", "default", (), True),
    # desktop pools: desktops are VMs it creates and removes; the display key Secret
    ("delete", "virtualmachines.kubevisor.io", "default", (), True),
    ("create", "virtualmachines.kubevisor.io", "default", (), True),
    # backup schedules: each due instant is a VMBackup; pruning deletes old ones
    ("watch", "vmbackupschedules.kubevisor.io", "*", (), True),
    ("patch", "vmbackupschedules.kubevisor.io", "default", ("--subresource=status",), True),
    ("create", "vmbackups.kubevisor.io", "default", (), True),
    ("delete", "vmbackups.kubevisor.io", "default", (), True),
    ("get", "secrets/kubevisor-display-key", NS, (), True),
    ("create", "secrets", NS, (), True),
    ("get", "secrets", "default", (), True),  # a VM's access.sshKeySecret, by name
    # application pools: the pool's public-key Secret in the pool's namespace
    ("create", "secrets", "default", (), True),
    # and not more:
    ("list", "secrets", "default", (), False),
    ("watch", "secrets", "default", (), False),
    ("update", "secrets", "default", (), False),
    ("delete", "secrets", "default", (), False),
    ("list", "leases.coordination.k8s.io", "default", (), False),
    ("create", "leases.coordination.k8s.io", NS, (), False),
    ("create", "pods", "default", (), False),
    ("patch", "customresourcedefinitions.apiextensions.k8s.io", "", (), False),
]


GATEWAY_CHECKS: list[Check] = [
    ("get", "desktopclaims.kubevisor.io", "default", (), True),
    ("get", "virtualmachines.kubevisor.io", "default", (), True),
    ("get", "secrets/kubevisor-display-key", NS, (), True),
    ("get", "secrets/kubevisor-app-key", NS, (), True),
    ("get", "desktoppools.kubevisor.io", "default", (), True),
    # its one write: a claim's status.session
    ("patch", "desktopclaims.kubevisor.io", "default", ("--subresource=status",), True),
    # and not more: only the one Secret, no claim's spec or metadata
    ("get", "secrets", NS, (), False),
    ("get", "secrets/kubevisor-display-key", "default", (), False),
    ("get", "secrets/kubevisor-app-key", "default", (), False),
    ("list", "desktopclaims.kubevisor.io", "default", (), False),
    ("patch", "desktoppools.kubevisor.io", "default", (), False),
    ("patch", "desktopclaims.kubevisor.io", "default", (), False),
    ("update", "desktopclaims.kubevisor.io", "default", ("--subresource=status",), False),
    ("patch", "virtualmachines.kubevisor.io", "default", (), False),
    ("create", "events", "default", (), False),
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


@pytest.mark.parametrize(
    "check",
    GATEWAY_CHECKS,
    ids=lambda c: f"{c[0]}-{c[1].split('.')[0]}{''.join(c[3])}-{c[2]}",
)
def test_gateway_role(installed: Installed, check: Check) -> None:
    allowed, answer = _can_i(installed, GATEWAY_SA, check)
    assert allowed == check[4], f"gateway can-i {check[:4]}: {answer}"
