"""The ``kubevisor`` CLI against the real API server, for the verbs that need only the API.

No controller runs: each verb is an API write (or read) and the test reads back what the
API server holds. The CLI runs as the user runs it, a process with a kubeconfig.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.api import groups, kinds
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

G, V = groups.GROUP, groups.VERSION
VM = kinds.VIRTUALMACHINE.plural
CLI = Path(sys.executable).with_name("kubevisor")


@pytest.fixture
def ns(cluster: Any) -> Iterator[str]:
    import kubernetes

    core = kubernetes.client.CoreV1Api(cluster.api)
    name = f"kvcli-{uuid.uuid4().hex[:6]}"
    testing.ensure_namespace(core, name)
    yield name
    # No kube-controller-manager here: a namespace never finishes deleting, so its VMs
    # are deleted (and awaited) first.
    custom = kubernetes.client.CustomObjectsApi(cluster.api)
    for plural in (VM, kinds.DESKTOPCLAIM.plural):
        custom.delete_collection_namespaced_custom_object(G, V, name, plural)
    testing.wait_for(
        lambda: not custom.list_namespaced_custom_object(G, V, name, VM)["items"],
        timeout=60, what=f"VMs of {name} deleted",
    )  # fmt: skip
    core.delete_namespace(name)


def _cli(cluster: Any, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    assert CLI.exists(), f"{CLI} missing: run hack/setup"
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    proc = subprocess.run([str(CLI), *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)  # fmt: skip
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    return proc


def _create_vm(admin: Any, ns: str, name: str, strategy: str = "Always") -> None:
    body = {
        "apiVersion": groups.API_VERSION,
        "kind": kinds.VIRTUALMACHINE.kind,
        "metadata": {"name": name},
        "spec": {"templateRef": {"name": "none"}, "runStrategy": strategy},
    }
    admin.create_namespaced_custom_object(G, V, ns, VM, body)


def test_cli_reads_and_writes_through_the_api(cluster: Any, ns: str) -> None:
    import kubernetes

    admin = kubernetes.client.CustomObjectsApi(cluster.api)
    _create_vm(admin, ns, "web")
    _create_vm(admin, ns, "db", strategy="Halted")

    listed = _cli(cluster, "list", "-n", ns).stdout.splitlines()
    assert listed[0].split()[:2] == ["NAME", "PHASE"]
    assert sorted(line.split()[0] for line in listed[1:]) == ["db", "web"]
    as_json = json.loads(_cli(cluster, "list", "-n", ns, "-o", "json").stdout)
    assert as_json["kind"] == "List" and len(as_json["items"]) == 2
    assert _cli(cluster, "list", "-n", ns, "-o", "name").stdout.split() == [
        "virtualmachine/db",
        "virtualmachine/web",
    ]
    everywhere = _cli(cluster, "list", "-A", "-o", "name").stdout.split()
    assert {"virtualmachine/db", "virtualmachine/web"} <= set(everywhere)
    got = yaml.safe_load(_cli(cluster, "get", "web", "-n", ns, "-o", "yaml").stdout)
    assert got["spec"]["runStrategy"] == "Always" and "managedFields" not in got["metadata"]

    missing = _cli(cluster, "get", "wbe", "-n", ns, ok=False).stderr
    assert f"VirtualMachine 'wbe' not found in namespace {ns}" in missing
    assert "db, web" in missing

    # power verbs: what the API server holds afterwards
    _cli(cluster, "stop", "web", "-n", ns)
    assert (
        admin.get_namespaced_custom_object(G, V, ns, VM, "web")["spec"]["runStrategy"] == "Halted"
    )
    started = json.loads(_cli(cluster, "start", "db", "-n", ns, "-o", "json").stdout)
    assert started["spec"]["runStrategy"] == "Always"  # -o prints the patched object
    _cli(cluster, "pause", "db", "-n", ns)
    notes = admin.get_namespaced_custom_object(G, V, ns, VM, "db")["metadata"]["annotations"]
    assert notes[groups.ANNOTATION_PAUSED] == "true"
    _cli(cluster, "restart", "db", "-n", ns)
    notes = admin.get_namespaced_custom_object(G, V, ns, VM, "db")["metadata"]["annotations"]
    assert notes[groups.ANNOTATION_RESTART]
    assert "already stopped" in _cli(cluster, "stop", "web", "-n", ns, ok=False).stderr


def test_vnc_prints_the_claims_url_or_says_how_to_get_one(cluster: Any, ns: str) -> None:
    import kubernetes

    admin = kubernetes.client.CustomObjectsApi(cluster.api)
    _create_vm(admin, ns, "desk-1")
    _create_vm(admin, ns, "plain")
    claim = {
        "apiVersion": groups.API_VERSION,
        "kind": kinds.DESKTOPCLAIM.kind,
        "metadata": {"name": "alice"},
        "spec": {"poolRef": {"name": "office"}, "user": "alice"},
    }
    plural = kinds.DESKTOPCLAIM.plural
    admin.create_namespaced_custom_object(G, V, ns, plural, claim)
    url = "http://127.0.0.1:6080/vnc.html?autoconnect=1&path=websockify%3Ftoken%3Dabc"
    status = {"phase": "Bound", "vmName": "desk-1", "url": url}
    admin.patch_namespaced_custom_object_status(G, V, ns, plural, "alice", {"status": status})

    assert _cli(cluster, "vnc", "desk-1", "-n", ns).stdout.strip() == url
    assert json.loads(_cli(cluster, "vnc", "desk-1", "-n", ns, "-o", "json").stdout)["url"] == url
    refused = _cli(cluster, "vnc", "plain", "-n", ns, ok=False).stderr
    assert "none holds plain" in refused and "kubevisor claim POOL --user USER" in refused


def test_bash_completion_offers_the_clusters_vm_names(cluster: Any, ns: str) -> None:
    import kubernetes

    admin = kubernetes.client.CustomObjectsApi(cluster.api)
    _create_vm(admin, ns, "alpha")
    _create_vm(admin, ns, "beta")
    script = _cli(cluster, "completion", "bash").stdout
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "PATH": f"{CLI.parent}:{os.environ['PATH']}",
    }
    words = ["kubevisor", "start", "-n", ns, ""]
    cmd = (
        f"{script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD=4; "
        '_kubevisor; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env,
                         timeout=60, check=True)  # fmt: skip
    assert sorted(w for w in out.stdout.split() if w) == ["alpha", "beta"]


def test_acting_verbs_print_what_they_created_with_o(cluster: Any, ns: str) -> None:
    """migrate, backup, restore (--no-wait: no controller here) and drain print the
    object(s) they created or changed with ``-o json|yaml|name``, their sentence without.
    (claim waits for the controller's binding: its rendering is table-tested in the unit
    tier, the wait in test_desktop_controller.)"""
    import kubernetes

    admin = kubernetes.client.CustomObjectsApi(cluster.api)
    core = kubernetes.client.CoreV1Api(cluster.api)
    _create_vm(admin, ns, "web")

    migration = json.loads(
        _cli(cluster, "migrate", "web", "-n", ns, "--no-wait", "-o", "json").stdout
    )
    assert migration["kind"] == "Migration" and migration["spec"]["vmName"] == "web"
    assert "managedFields" not in migration["metadata"]
    held = admin.get_namespaced_custom_object(G, V, ns, "migrations", migration["metadata"]["name"])
    assert held["metadata"]["uid"] == migration["metadata"]["uid"]  # the object it created
    human = _cli(cluster, "migrate", "web", "-n", ns, "--no-wait").stdout.strip()
    assert human.startswith("migration/") and human.endswith(" created")  # unchanged

    backup = yaml.safe_load(
        _cli(
            cluster, "backup", "web", "-n", ns, "--no-wait", "--name", "web-b1", "-o", "yaml"
        ).stdout
    )
    assert (backup["kind"], backup["metadata"]["name"], backup["spec"]["vmName"]) == (
        "VMBackup", "web-b1", "web",
    )  # fmt: skip
    named = _cli(cluster, "restore", "web-b1", "--as", "web2", "-n", ns, "--no-wait", "-o", "name")
    assert named.stdout.strip() == "virtualmachine/web2"
    restored = admin.get_namespaced_custom_object(G, V, ns, VM, "web2")
    assert restored["spec"]["source"] == {"backup": {"name": "web-b1"}}

    node = f"kvcli-node-{uuid.uuid4().hex[:6]}"
    core.create_node({"metadata": {"name": node}})
    try:
        drained = json.loads(_cli(cluster, "drain", node, "--timeout=30", "-o", "json").stdout)
        assert drained["kind"] == "List"
        assert [(o["kind"], o["metadata"]["name"]) for o in drained["items"]] == [("Node", node)]
        assert drained["items"][0]["spec"]["unschedulable"] is True
        assert _cli(cluster, "uncordon", node).stdout.strip() == f"node/{node} uncordoned"
        said = _cli(cluster, "drain", node, "--timeout=30")
        assert said.stdout.splitlines() == [f"node/{node} cordoned", f"node/{node} drained"]
    finally:
        core.delete_node(node)
    for name in [o["metadata"]["name"] for o in admin.list_namespaced_custom_object(
        G, V, ns, "migrations")["items"]]:  # fmt: skip
        admin.delete_namespaced_custom_object(G, V, ns, "migrations", name)
    admin.delete_namespaced_custom_object(G, V, ns, kinds.VMBACKUP.plural, "web-b1")
