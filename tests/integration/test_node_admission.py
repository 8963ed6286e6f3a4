"""Node-bound admission against the real API server: an agent changes only its node's objects.

The chart's ValidatingAdmissionPolicy (rendered by the pinned helm, with the agent's
ServiceAccount and roles) judges the node that Kubernetes binds into a Pod-bound
ServiceAccount token. Two Pods of the agent's ServiceAccount are bound to two nodes
(Pod objects with ``spec.nodeName``: no kubelet needed, they never run), a TokenRequest
bound to each gives the two agents' tokens, and each token writes what an agent writes:
VM status, a VRF's per-node entry, its Lease, an Event. Its own node's are accepted, the
other node's refused with the policy's sentence naming both nodes.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.api import groups, kinds
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubevisor"
RELEASE = "kvadm"
AGENT_SA = f"{RELEASE}-kubevisor-agent"
G, V = groups.GROUP, groups.VERSION
VM = kinds.VIRTUALMACHINE.plural
VRF = kinds.VRF.plural
TEMPLATES = ("serviceaccounts.yaml", "rbac-agent.yaml", "admission-agent.yaml")


@dataclass(frozen=True)
class Agents:
    """The release namespace, the two nodes and an API client per agent token."""

    namespace: str
    node1: str
    node2: str
    clients: dict[str, Any]  # node (or "unbound") -> kubernetes.client.ApiClient


def _client(cluster: Any, token: str) -> Any:
    import kubernetes

    base = cluster.api.configuration
    cfg = kubernetes.client.Configuration()
    cfg.host = base.host
    cfg.ssl_ca_cert = base.ssl_ca_cert
    cfg.api_key = {"authorization": f"Bearer {token}"}
    return kubernetes.client.ApiClient(cfg)


@pytest.fixture
def agents(cluster: Any, helm: Path, tmp_path: Path) -> Iterator[Agents]:
    import kubernetes

    suffix = uuid.uuid4().hex[:6]
    ns, node1, node2 = f"kvadm-{suffix}", f"adm1-{suffix}", f"adm2-{suffix}"
    core = kubernetes.client.CoreV1Api(cluster.api)
    testing.ensure_namespace(core, ns)
    shown = [a for t in TEMPLATES for a in ("--show-only", f"templates/{t}")]
    proc = subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "--namespace", ns, *shown],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert {d["kind"] for d in docs} >= {"ValidatingAdmissionPolicy", "ServiceAccount"}
    rendered = tmp_path / "agent.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    kubectl = [str(cluster.kubectl), f"--kubeconfig={cluster.kubeconfig}"]
    applied = subprocess.run([*kubectl, "apply", "-f", str(rendered)], capture_output=True,
                             text=True, check=False)  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    clients: dict[str, Any] = {}
    try:
        for node in (node1, node2):
            pod = testing.node_bound_pod(core, ns, f"agent-{node}", sa=AGENT_SA, node=node)
            ref = {"kind": "Pod", "apiVersion": "v1", **pod}
            body = {"spec": {"expirationSeconds": 3600, "boundObjectRef": ref}}
            token = core.create_namespaced_service_account_token(AGENT_SA, ns, body).status.token
            clients[node] = _client(cluster, token)
        unbound = core.create_namespaced_service_account_token(
            AGENT_SA, ns, {"spec": {"expirationSeconds": 3600}}
        ).status.token
        clients["unbound"] = _client(cluster, unbound)
        yield Agents(namespace=ns, node1=node1, node2=node2, clients=clients)
    finally:
        for c in clients.values():
            c.close()
        subprocess.run([*kubectl, "delete", "--ignore-not-found", "--wait", "-f", str(rendered)],
                       capture_output=True, check=False)  # fmt: skip
        # Pods without a kubelet never finish a graceful deletion, and with no
        # kube-controller-manager a namespace never finishes deleting: force the Pods
        # and delete the namespace (its objects go with it once a namespace controller runs).
        core.delete_collection_namespaced_pod(
            ns, label_selector=testing.LABEL_NODE_BOUND_POD, grace_period_seconds=0
        )
        core.delete_namespace(ns)


def _refusal(call: Any) -> str:
    """The API server's message when ``call`` is refused (403); '' when it was accepted."""
    import kubernetes

    try:
        call()
    except kubernetes.client.ApiException as exc:
        assert exc.status == 403, f"{exc.status}: {exc.body}"
        return str(json.loads(exc.body)["message"])
    return ""


def _vm(admin: Any, ns: str, name: str, node: str) -> None:
    body = {
        "apiVersion": groups.API_VERSION,
        "kind": kinds.VIRTUALMACHINE.kind,
        "metadata": {"name": name, "labels": {groups.LABEL_NODE: node}},
        "spec": {"templateRef": {"name": "none"}},
    }
    admin.create_namespaced_custom_object(G, V, ns, VM, body)
    admin.patch_namespaced_custom_object_status(G, V, ns, VM, name, {"status": {"nodeName": node}})


def test_an_agent_changes_only_its_own_nodes_objects(cluster: Any, agents: Agents) -> None:
    import kubernetes

    ns, n1, n2 = agents.namespace, agents.node1, agents.node2
    admin = kubernetes.client.CustomObjectsApi(cluster.api)
    _vm(admin, ns, "vm-1", n1)
    _vm(admin, ns, "vm-2", n2)
    as1 = kubernetes.client.CustomObjectsApi(agents.clients[n1])

    def write_status(api: Any, name: str) -> Any:
        body = {"status": {"consoleLog": f"/var/log/{name}.log"}}
        return lambda: api.patch_namespaced_custom_object_status(G, V, ns, VM, name, body)

    # The policy takes effect once the API server's policy informer has it: until then
    # node-1's token could still write vm-2.
    refused = testing.wait_for(
        lambda: _refusal(write_status(as1, "vm-2")), timeout=60, what="the policy in force"
    )
    print(f"refused: {refused}")
    assert f"the agent of node {n1} may change only objects on its node" in refused
    assert f"virtualmachines {ns}/vm-2 is on node {n2}" in refused
    assert _refusal(write_status(as1, "vm-1")) == ""
    vm1 = admin.get_namespaced_custom_object(G, V, ns, VM, "vm-1")
    assert vm1["status"]["consoleLog"] == "/var/log/vm-1.log"
    # writes that raced the policy's arrival may have landed; a refused one changes nothing
    before = admin.get_namespaced_custom_object(G, V, ns, VM, "vm-2")["status"].get("consoleLog")
    changed = {"status": {"consoleLog": "/var/log/changed.log"}}
    assert (
        _refusal(lambda: as1.patch_namespaced_custom_object_status(G, V, ns, VM, "vm-2", changed))
        != ""
    )
    vm2 = admin.get_namespaced_custom_object(G, V, ns, VM, "vm-2")
    assert vm2["status"].get("consoleLog") == before

    # The other agent, the other way round; a token bound to no Pod names no node.
    as2 = kubernetes.client.CustomObjectsApi(agents.clients[n2])
    assert _refusal(write_status(as2, "vm-2")) == ""
    assert f"is on node {n1}" in _refusal(write_status(as2, "vm-1"))
    unbound = kubernetes.client.CustomObjectsApi(agents.clients["unbound"])
    assert "this token names no node" in _refusal(write_status(unbound, "vm-1"))

    # The agent may remove its finalizer (the main resource) but not relabel the VM.
    relabel = {"metadata": {"labels": {groups.LABEL_MIGRATION_TARGET: n2}}}
    refused = _refusal(lambda: as1.patch_namespaced_custom_object(G, V, ns, VM, "vm-1", relabel))
    assert "not its spec or labels" in refused

    # A VRF: each agent patches only its own key of status.nodes.
    vrf = {
        "apiVersion": groups.API_VERSION,
        "kind": kinds.VRF.kind,
        "metadata": {"name": "red"},
        "spec": {"interfaces": [{"name": "h0", "network": "seg", "addresses": ["10.9.0.1/24"]}]},
    }
    admin.create_namespaced_custom_object(G, V, ns, VRF, vrf)

    def entry(api: Any, node: str) -> Any:
        body = {"status": {"nodes": {node: {"ready": True}}}}
        return lambda: api.patch_namespaced_custom_object_status(G, V, ns, VRF, "red", body)

    assert _refusal(entry(as1, n1)) == ""
    assert f'may change only status.nodes["{n1}"] of VRF {ns}/red' in _refusal(entry(as1, n2))
    assert _refusal(entry(as2, n2)) == ""
    red = admin.get_namespaced_custom_object(G, V, ns, VRF, "red")
    assert set(red["status"]["nodes"]) == {n1, n2}

    # Its own Lease only (the chart's Lease namespace is the release namespace).
    coord1 = kubernetes.client.CoordinationV1Api(agents.clients[n1])
    assert _refusal(lambda: coord1.create_namespaced_lease(ns, testing.fake_node_lease(n1))) == ""
    refused = _refusal(lambda: coord1.create_namespaced_lease(ns, testing.fake_node_lease(n2)))
    assert f"may write only its own Lease {n1}, not {n2}" in refused

    # Events reported from its node only.
    core1 = kubernetes.client.CoreV1Api(agents.clients[n1])

    def event_body(host: str) -> dict[str, Any]:
        return {
            "metadata": {"generateName": "vm-1."},
            "involvedObject": {"kind": "VirtualMachine", "name": "vm-1", "namespace": ns},
            "reason": "Test",
            "message": "from a node",
            "type": "Normal",
            "source": {"component": "kubevisor-agent", "host": host},
            "reportingComponent": "kubevisor-agent",
            "reportingInstance": host,
        }

    def event(host: str) -> Any:
        return lambda: core1.create_namespaced_event(ns, event_body(host))

    assert _refusal(event(n1)) == ""
    assert "may post only Events reported from its node" in _refusal(event(n2))
    # a repeat bumps its own Event's count; another node's Event it may not touch, not
    # even by rewriting the reporter to its own node
    core2 = kubernetes.client.CoreV1Api(agents.clients[n2])
    mine = core1.create_namespaced_event(ns, event_body(n1))
    theirs = core2.create_namespaced_event(ns, event_body(n2))
    bump = {"count": 2}
    assert _refusal(lambda: core1.patch_namespaced_event(mine.metadata.name, ns, bump)) == ""
    takeover = {"count": 2, "reportingInstance": n1, "source": {"host": n1}}
    refused = _refusal(lambda: core1.patch_namespaced_event(theirs.metadata.name, ns, takeover))
    assert "may post only Events reported from its node" in refused
