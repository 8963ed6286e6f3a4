"""The controller against a real API server: placement, templates, runStrategy, restart,
RestartRequired and finalizers. Nodes are fake: Leases this test writes, no agent."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kubevisor.api import groups, nodes
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

NS = "vmctl-test"
LEASE_NS = nodes.LEASE_NAMESPACE
G, V = groups.GROUP, groups.VERSION
NODES = {
    "fake-a": ({"zone": "a"}, {"cpu": 16, "memoryBytes": 2 * 2**30, "gpus": 0}),
    "fake-b": ({"zone": "b", "gpu": "yes"}, {"cpu": 4, "memoryBytes": 1 * 2**30, "gpus": 1}),
}
TEMPLATE = {
    "cpu": {"cores": 1},
    "memory": "256Mi",
    "disks": [{"name": "root", "image": "tiny", "size": "1Gi"}],
    "nics": [{"name": "eth0", "network": "default"}],
}


def _wait(predicate: Callable[[], Any], *, timeout: float = 30, what: str) -> Any:
    return testing.wait_for(predicate, timeout=timeout, what=what)


class Env:
    def __init__(self, cluster: Any) -> None:
        import kubernetes

        self.k = kubernetes
        self.custom = kubernetes.client.CustomObjectsApi(cluster.api)
        self.core = kubernetes.client.CoreV1Api(cluster.api)
        self.coord = kubernetes.client.CoordinationV1Api(cluster.api)

    def create(self, plural: str, kind: str, name: str, spec: dict[str, Any], **meta: Any) -> None:
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": kind,
            "metadata": {"name": name, **meta},
            "spec": spec,
        }
        self.custom.create_namespaced_custom_object(G, V, NS, plural, body)

    def vm(self, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                G, V, NS, "virtualmachines", name
            )
        except self.k.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return dict((self.vm(name) or {}).get("status") or {})

    def cond(self, name: str, type_: str) -> dict[str, Any]:
        for c in self.status(name).get("conditions") or []:
            if c["type"] == type_:
                return dict(c)
        return {}

    def patch_vm(self, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(G, V, NS, "virtualmachines", name, body)

    def agent_status(self, name: str, status: dict[str, Any]) -> None:
        """What the agent would report (its own field manager)."""
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": NS},
            "status": status,
        }
        self.custom.patch_namespaced_custom_object_status(
            G,
            V,
            NS,
            "virtualmachines",
            name,
            body,
            field_manager="kubevisor-agent",
            force=True,
            _content_type="application/apply-patch+yaml",
        )

    def events(self, name: str, reason: str) -> list[str]:
        items = self.core.list_namespaced_event(
            NS, field_selector=f"involvedObject.name={name}"
        ).items
        return [e.message for e in items if e.reason == reason]


@pytest.fixture(scope="module")
def env(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(cluster)
    for ns in (NS, LEASE_NS):
        testing.ensure_namespace(e.core, ns)
    for name, (labels, cap) in NODES.items():
        e.coord.create_namespaced_lease(
            LEASE_NS, testing.fake_node_lease(name, labels=labels, capacity=cap)
        )
    logfile = tmp_path_factory.mktemp("vmctl") / "controller.log"
    with testing.running_controller(cluster.kubeconfig, log=logfile, namespaces=[NS]):
        try:
            yield e
        finally:
            # Leave nothing behind: drop finalizers so the objects go with the namespace.
            for vm in e.custom.list_namespaced_custom_object(G, V, NS, "virtualmachines")["items"]:
                name = vm["metadata"]["name"]
                e.patch_vm(name, {"metadata": {"finalizers": None}})
                e.custom.delete_namespaced_custom_object(G, V, NS, "virtualmachines", name)
            for name in NODES:
                e.coord.delete_namespaced_lease(name, LEASE_NS)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _template(env: Env, **spec: Any) -> str:
    name = _name("tmpl")
    env.create("vmtemplates", "VMTemplate", name, {**TEMPLATE, **spec})
    return name


def test_vm_is_placed_labelled_and_resolved(env: Env) -> None:
    tmpl = _template(env)
    env.create(
        "virtualmachines",
        "VirtualMachine",
        "web",
        {"templateRef": {"name": tmpl}, "memory": "512Mi"},
    )
    st = _wait(lambda: env.status("web").get("nodeName") and env.status("web"), what="placement")
    assert st["nodeName"] == "fake-a"  # most free memory
    assert st["desiredState"] == "Running"
    assert st["machine"]["memory"] == "512Mi"  # the VM's field overrides the template
    assert st["machine"]["disks"][0]["image"] == "tiny"
    mac = st["machine"]["nics"][0]["mac"]
    assert mac.startswith("52:54:")
    meta = _wait(lambda: (env.vm("web") or {})["metadata"].get("labels"), what="label")
    assert meta[groups.LABEL_NODE] == "fake-a"
    assert groups.FINALIZER in env.vm("web")["metadata"]["finalizers"]  # type: ignore[index]
    assert env.cond("web", "Scheduled")["status"] == "True"
    assert env.cond("web", "TemplateResolved")["status"] == "True"
    tstatus = _wait(
        lambda: env.custom.get_namespaced_custom_object(G, V, NS, "vmtemplates", tmpl).get(
            "status"
        ),
        what="template status",
    )
    assert tstatus["phase"] == "Ready"


def test_template_not_found_then_recovers(env: Env) -> None:
    tmpl = _name("later")
    env.create("virtualmachines", "VirtualMachine", "orphan", {"templateRef": {"name": tmpl}})
    cond = _wait(lambda: env.cond("orphan", "TemplateResolved"), what="TemplateResolved")
    assert (cond["status"], cond["reason"]) == ("False", "TemplateNotFound")
    assert tmpl in cond["message"]
    assert env.status("orphan")["phase"] == "Pending"
    # Ready from the first status write (issue 9): False with the reason it is not placed.
    ready = env.cond("orphan", "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TemplateNotFound")
    _wait(lambda: env.events("orphan", "TemplateNotFound"), what="TemplateNotFound Event")
    env.create("vmtemplates", "VMTemplate", tmpl, TEMPLATE)
    _wait(lambda: env.status("orphan").get("nodeName"), what="placement after template")
    assert env.cond("orphan", "TemplateResolved")["status"] == "True"


def test_unschedulable_names_each_node(env: Env) -> None:
    tmpl = _template(env)
    env.create(
        "virtualmachines",
        "VirtualMachine",
        "huge",
        {"templateRef": {"name": tmpl}, "memory": "64Gi"},
    )
    cond = _wait(lambda: env.cond("huge", "Scheduled"), what="Scheduled")
    assert (cond["status"], cond["reason"]) == ("False", "Unschedulable")
    assert "fake-a: not enough memory (need 64Gi" in cond["message"]
    assert "fake-b: not enough memory" in cond["message"]
    assert "nodeName" not in env.status("huge")
    ready = env.cond("huge", "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Unschedulable")
    assert ready["message"] == cond["message"]
    _wait(lambda: env.events("huge", "Unschedulable"), what="Unschedulable Event")


def test_gpu_and_node_selector(env: Env) -> None:
    tmpl = _template(env)
    env.create(
        "virtualmachines", "VirtualMachine", "gpu", {"templateRef": {"name": tmpl}, "gpus": 1}
    )
    env.create(
        "virtualmachines",
        "VirtualMachine",
        "zoned",
        {"templateRef": {"name": tmpl}, "nodeSelector": {"zone": "b"}},
    )
    env.create(
        "virtualmachines",
        "VirtualMachine",
        "nowhere",
        {"templateRef": {"name": tmpl}, "nodeSelector": {"zone": "mars"}},
    )
    assert _wait(lambda: env.status("gpu").get("nodeName"), what="gpu VM placed") == "fake-b"
    assert _wait(lambda: env.status("zoned").get("nodeName"), what="zoned placed") == "fake-b"
    cond = _wait(lambda: env.cond("nowhere", "Scheduled"), what="nowhere Scheduled")
    assert "fake-a: does not match nodeSelector zone=mars" in cond["message"]
    # The only GPU is taken now: a second GPU VM does not fit anywhere.
    env.create(
        "virtualmachines", "VirtualMachine", "gpu2", {"templateRef": {"name": tmpl}, "gpus": 1}
    )
    cond = _wait(lambda: env.cond("gpu2", "Scheduled"), what="gpu2 Scheduled")
    assert "fake-a: lacks GPUs" in cond["message"]
    assert "fake-b: not enough GPUs (need 1, free 0)" in cond["message"]


def test_halted_is_stopped_and_not_placed(env: Env) -> None:
    tmpl = _template(env)
    env.create(
        "virtualmachines",
        "VirtualMachine",
        "halted",
        {"templateRef": {"name": tmpl}, "runStrategy": "Halted"},
    )
    st = _wait(
        lambda: env.status("halted").get("desiredState") and env.status("halted"),
        what="desiredState",
    )
    assert st["desiredState"] == "Stopped"
    assert st["phase"] == "Stopped"
    assert "nodeName" not in st
    env.patch_vm("halted", {"spec": {"runStrategy": "Always"}})
    _wait(lambda: env.status("halted").get("nodeName"), what="placed after Always")
    assert env.status("halted")["desiredState"] == "Running"


def test_restart_annotation_and_restart_required(env: Env) -> None:
    tmpl = _template(env)
    env.create("virtualmachines", "VirtualMachine", "svc", {"templateRef": {"name": tmpl}})
    _wait(lambda: env.status("svc").get("nodeName"), what="placement")
    env.agent_status("svc", {"phase": "Running"})
    # A template change does not reach the running VM; it says a restart is needed.
    env.custom.patch_namespaced_custom_object(
        G, V, NS, "vmtemplates", tmpl, {"spec": {"memory": "384Mi"}}
    )
    cond = _wait(
        lambda: (
            env.cond("svc", "RestartRequired").get("status") == "True"
            and env.cond("svc", "RestartRequired")
        ),
        what="RestartRequired",
    )
    assert cond["reason"] == "SpecChanged" and "memory" in cond["message"]
    assert env.status("svc")["machine"]["memory"] == "256Mi"
    assert env.status("svc")["restartRequired"] is True
    # Restart: the token is copied and the machine refreshed.
    env.patch_vm("svc", {"metadata": {"annotations": {groups.ANNOTATION_RESTART: "r1"}}})
    _wait(lambda: env.status("svc").get("restartToken") == "r1", what="restartToken")
    st = env.status("svc")
    assert st["machine"]["memory"] == "384Mi"
    assert env.cond("svc", "RestartRequired")["status"] == "False"
    # The agent restarted it; a crash under Always is restarted with a new token.
    env.agent_status("svc", {"phase": "Failed", "appliedRestartToken": "r1"})
    _wait(lambda: env.status("svc").get("restartToken") == "r1#1", what="auto restart token")
    # Pause.
    env.agent_status("svc", {"phase": "Running", "appliedRestartToken": "r1#1"})
    env.patch_vm("svc", {"metadata": {"annotations": {"kubevisor.io/paused": "true"}}})
    _wait(lambda: env.status("svc").get("desiredState") == "Paused", what="Paused")


def test_invalid_annotations_are_a_condition_and_an_event(env: Env) -> None:
    """Issue 9: a restart annotation status cannot hold and a paused/power value the
    controller does not know are ignored, and said so: AnnotationsValid=False with reason
    InvalidAnnotation, a Warning Event, status writes keep working; fixing them clears it."""
    tmpl = _template(env)
    env.create("virtualmachines", "VirtualMachine", "notes", {"templateRef": {"name": tmpl}})
    _wait(lambda: env.status("notes").get("nodeName"), what="placement")
    env.patch_vm(
        "notes",
        {
            "metadata": {
                "annotations": {
                    groups.ANNOTATION_RESTART: "x" * 300,
                    groups.ANNOTATION_PAUSED: "yes",
                    groups.ANNOTATION_POWER: "on",
                }
            }
        },
    )
    cond = _wait(
        lambda: (
            env.cond("notes", "AnnotationsValid").get("status") == "False"
            and env.cond("notes", "AnnotationsValid")
        ),
        what="AnnotationsValid=False",
    )
    assert cond["reason"] == "InvalidAnnotation"
    for key in (groups.ANNOTATION_RESTART, groups.ANNOTATION_PAUSED, groups.ANNOTATION_POWER):
        assert key in cond["message"]
    assert "300 bytes" in cond["message"] and "'yes'" in cond["message"]
    assert "restartToken" not in env.status("notes")
    assert env.status("notes")["desiredState"] == "Running"
    _wait(lambda: env.events("notes", "InvalidAnnotation"), what="InvalidAnnotation Event")
    # Status writes still work: the agent's phase and a later restart get through.
    env.patch_vm(
        "notes",
        {
            "metadata": {
                "annotations": {
                    groups.ANNOTATION_RESTART: "r1",
                    groups.ANNOTATION_PAUSED: None,
                    groups.ANNOTATION_POWER: None,
                }
            }
        },
    )
    _wait(lambda: env.status("notes").get("restartToken") == "r1", what="restartToken r1")
    _wait(lambda: not env.cond("notes", "AnnotationsValid"), what="AnnotationsValid removed")


def test_a_mac_used_by_another_vm_on_the_segment_keeps_the_later_off(env: Env) -> None:
    """Issue 9 item 4: two VMs with one MAC on one segment both ran. The later one is now
    kept off a node: Scheduled=False/MACConflict naming the earlier VM, Ready=False, a
    Warning Event; it is placed once the earlier one is gone."""
    tmpl = _template(env)
    nic = {"name": "eth0", "network": "default", "mac": "52:54:00:aa:bb:01"}
    # small and on fake-a, so later tests still find room on fake-b
    spec = {"templateRef": {"name": tmpl}, "nics": [nic], "memory": "64Mi"}
    spec["nodeSelector"] = {"zone": "a"}
    env.create("virtualmachines", "VirtualMachine", "mac-a", spec)
    _wait(lambda: env.status("mac-a").get("nodeName"), what="mac-a placed")
    env.create("virtualmachines", "VirtualMachine", "mac-b", spec)
    cond = _wait(
        lambda: (
            env.cond("mac-b", "Scheduled").get("reason") == "MACConflict"
            and env.cond("mac-b", "Scheduled")
        ),
        what="MACConflict",
    )
    assert cond["status"] == "False"
    assert (
        f"VirtualMachine {NS}/mac-a" in cond["message"] and "52:54:00:aa:bb:01" in cond["message"]
    )
    assert "nodeName" not in env.status("mac-b")
    assert env.cond("mac-b", "Ready")["reason"] == "MACConflict"
    _wait(lambda: env.events("mac-b", "MACConflict"), what="MACConflict Event")
    env.custom.delete_namespaced_custom_object(G, V, NS, "virtualmachines", "mac-a")
    _wait(lambda: env.status("mac-b").get("nodeName"), what="mac-b placed after mac-a went")


def test_finalizer_waits_for_the_agent(env: Env) -> None:
    tmpl = _template(env)
    env.create("virtualmachines", "VirtualMachine", "doomed", {"templateRef": {"name": tmpl}})
    _wait(
        lambda: groups.FINALIZER in ((env.vm("doomed") or {})["metadata"].get("finalizers") or []),
        what="finalizer",
    )
    # placement puts the agent's finalizer on with ours and the label (one patch)
    fin = env.vm("doomed")["metadata"]["finalizers"]  # type: ignore[index]
    assert set(fin) == {groups.FINALIZER, groups.AGENT_FINALIZER}
    env.agent_status("doomed", {"phase": "Running"})  # an agent has reported on it
    env.custom.delete_namespaced_custom_object(G, V, NS, "virtualmachines", "doomed")
    _wait(
        lambda: (env.vm("doomed") or {}).get("metadata", {}).get("deletionTimestamp"),
        what="deletionTimestamp",
    )
    # The agent has not cleaned up: our finalizer stays (polled for a short while).
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert groups.FINALIZER in env.vm("doomed")["metadata"]["finalizers"]  # type: ignore[index]
        time.sleep(0.3)
    env.patch_vm("doomed", {"metadata": {"finalizers": [groups.FINALIZER]}})
    _wait(lambda: env.vm("doomed") is None, what="VM gone after agent cleanup")
    # Placed, but no agent ever reported: both finalizers are released by the controller.
    env.create("virtualmachines", "VirtualMachine", "unseen", {"templateRef": {"name": tmpl}})
    _wait(
        lambda: (
            groups.AGENT_FINALIZER in ((env.vm("unseen") or {})["metadata"].get("finalizers") or [])
        ),
        what="both finalizers on the placed VM",
    )
    env.custom.delete_namespaced_custom_object(G, V, NS, "virtualmachines", "unseen")
    _wait(lambda: env.vm("unseen") is None, what="never-reported VM gone")
    # Never placed: deleted at once.
    env.create(
        "virtualmachines",
        "VirtualMachine",
        "short",
        {"templateRef": {"name": tmpl}, "runStrategy": "Halted"},
    )
    _wait(lambda: env.status("short").get("desiredState"), what="short reconciled")
    env.custom.delete_namespaced_custom_object(G, V, NS, "virtualmachines", "short")
    _wait(lambda: env.vm("short") is None, what="unplaced VM gone")


def test_clone_copies_source_disks_on_its_node(env: Env) -> None:
    tmpl = _template(env)
    env.create(
        "virtualmachines",
        "VirtualMachine",
        "clone-1",
        {"source": {"virtualMachine": {"name": "golden"}}},
    )
    cond = _wait(lambda: env.cond("clone-1", "TemplateResolved"), what="clone waits")
    assert cond["reason"] == "SourceNotFound"
    env.create(
        "virtualmachines",
        "VirtualMachine",
        "golden",
        {"templateRef": {"name": tmpl}, "nodeSelector": {"zone": "b"}},
    )
    src = _wait(
        lambda: env.status("golden").get("nodeName") and env.status("golden"), what="source placed"
    )
    st = _wait(
        lambda: env.status("clone-1").get("nodeName") and env.status("clone-1"), what="clone placed"
    )
    assert st["nodeName"] == src["nodeName"] == "fake-b"  # local disks: same node
    disk = st["machine"]["disks"][0]
    assert (disk["image"], disk["clone"]) == (f"vm:{NS}/golden/root", "full")
    assert st["machine"]["nics"][0]["mac"] != src["machine"]["nics"][0]["mac"]


def test_cli_verbs(env: Env, cluster: Any) -> None:
    tmpl = _template(env)
    env.create("virtualmachines", "VirtualMachine", "cli", {"templateRef": {"name": tmpl}})
    _wait(lambda: env.status("cli").get("nodeName"), what="placement")

    def cli(*args: str) -> str:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "kubevisor.cli.main",
                "--kubeconfig",
                str(cluster.kubeconfig),
                *args,
                "-n",
                NS,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout

    assert "cli" in cli("list")
    cli("restart", "cli")
    _wait(lambda: env.status("cli").get("restartToken"), what="restartToken from CLI")
    cli("pause", "cli")
    _wait(lambda: env.status("cli").get("desiredState") == "Paused", what="paused")
    cli("unpause", "cli")
    _wait(lambda: env.status("cli").get("desiredState") == "Running", what="unpaused")
    cli("stop", "cli")
    _wait(lambda: env.status("cli").get("desiredState") == "Stopped", what="stopped")
    assert "Stopped" in cli("get", "cli")
