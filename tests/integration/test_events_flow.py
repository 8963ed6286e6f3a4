"""The Events of the main VM flows, posted by the real processes on a real API server.

The real ``kubevisor-controller`` and the real ``kubevisor-agent`` (libvirt's test
driver: a real driver with a fake hypervisor; the node bridge in a namespace the test
makes). Each flow's Events are read back as ``kubectl describe`` reads them (by
involvedObject), with their type, reason, reporter and a sentence:

- a VM that boots: Scheduled (controller), Starting (the agent, on its node), Running
  (the controller's status watch), all Normal;
- a VM naming a template that does not exist, and one no node fits: Warnings from the
  controller (TemplateNotFound, Unschedulable);
- a VM whose disk image is not on the node: a Warning from the agent (ImageNotFound),
  its retries aggregated into the one Event's count.

The VRF's Ready Event is checked in test_observability.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubevisor.api import groups
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

NS = "kvevents-test"
LEASE_NS = "kvevents-leases"  # this test's own: no other test's fake node gets the VMs
NODE = "kvevents-node"
SELECT = {"kvevents": "yes"}
G, V = groups.GROUP, groups.VERSION
VMS = "virtualmachines"


def _wait(predicate: Callable[[], Any], *, timeout: float = 60, what: str) -> Any:
    return testing.wait_for(predicate, timeout=timeout, what=what)


@pytest.fixture
def node_netns() -> Iterator[str]:
    """The agent's node: a network namespace holding the node bridge kvbr0."""
    with testing.node_netns("kvev") as name:
        yield name


def _vm(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": groups.API_VERSION,
        "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "cpu": {"cores": 1}, "memory": "256Mi", "nodeSelector": SELECT,
            "disks": [{"name": "root", "image": "tiny", "size": "1Gi"}],
            "nics": [{"name": "eth0", "network": "default"}],
            **spec,
        },
    }  # fmt: skip


def test_vm_flows_post_their_events(cluster: Any, tmp_path: Path, node_netns: str) -> None:
    import kubernetes

    testing.require_module("libvirt")
    testing.require_tools("qemu-img")
    custom = kubernetes.client.CustomObjectsApi(cluster.api)
    core = kubernetes.client.CoreV1Api(cluster.api)
    coord = kubernetes.client.CoordinationV1Api(cluster.api)
    testing.ensure_namespace(core, NS)
    suffix = uuid.uuid4().hex[:6]
    boots, notemplate, nofit, noimage = (f"{n}-{suffix}" for n in ("boots", "tmpl", "nofit", "img"))

    def events(name: str) -> dict[str, Any]:
        """reason -> the Event, of the Events whose involvedObject is ``name``."""
        listed = core.list_namespaced_event(NS, field_selector=f"involvedObject.name={name}")
        return {e.reason: e for e in listed.items}

    def gone(name: str) -> bool:
        try:
            custom.get_namespaced_custom_object(G, V, NS, VMS, name)
        except kubernetes.client.ApiException as exc:
            return exc.status == 404
        return False

    images = tmp_path / "images"
    images.mkdir()
    made = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(images / "tiny.qcow2"), "16M"],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    argv = [
        str(Path(sys.executable).with_name("kubevisor-agent")),
        f"--node={NODE}", f"--kubeconfig={cluster.kubeconfig}", "--libvirt-uri=test:///default",
        f"--netns={node_netns}", f"--state-dir={tmp_path / 'state'}", f"--image-dir={images}",
        *[f"--label={k}={v}" for k, v in SELECT.items()],
        "--network=default=kvbr0", "--cpu=2", "--memory=4Gi", "--stop-timeout=5",
    ]  # fmt: skip
    controller_argv = [
        sys.executable, "-m", "kubevisor.controller.main", f"--kubeconfig={cluster.kubeconfig}",
        f"--namespace={NS}",
    ]  # fmt: skip
    env = {"KUBEVISOR_LEASE_NAMESPACE": LEASE_NS}
    names = (boots, notemplate, nofit, noimage)
    try:
        with (
            testing.running_process(argv, log=tmp_path / "agent.log", what="agent", env=env),
            testing.running_process(
                controller_argv, log=tmp_path / "controller.log", what="controller", env=env
            ),
        ):
            for body in (
                _vm(boots),
                _vm(notemplate, templateRef={"name": f"missing-{suffix}"}),
                _vm(nofit, nodeSelector={"kvevents": "no-such-node"}),
                _vm(noimage, disks=[{"name": "root", "image": "not-on-node", "size": "1Gi"}]),
            ):
                custom.create_namespaced_custom_object(G, V, NS, VMS, body)

            # A VM that boots: placed, started by the agent, Running.
            seen = _wait(
                lambda: (
                    (e := events(boots)) and {"Scheduled", "Starting", "Running"} <= set(e) and e
                ),
                timeout=90,
                what="the VM's Scheduled, Starting and Running Events",
            )
            uid = custom.get_namespaced_custom_object(G, V, NS, VMS, boots)["metadata"]["uid"]
            for reason, reporter, instance in (
                ("Scheduled", "kubevisor-controller", socket.gethostname()),
                ("Starting", "kubevisor-agent", NODE),
                ("Running", "kubevisor-controller", socket.gethostname()),
            ):
                event = seen[reason]
                ref = event.involved_object
                assert (ref.kind, ref.name, ref.namespace, ref.uid) == (
                    "VirtualMachine", boots, NS, uid,
                ), reason  # fmt: skip
                assert event.type == "Normal", reason
                assert (event.reporting_component, event.reporting_instance) == (
                    reporter, instance,
                ), reason  # fmt: skip
                assert event.message.endswith("."), (reason, event.message)  # a sentence
            assert NODE in seen["Starting"].message and NODE in seen["Scheduled"].message

            # What only the controller can judge: Warnings with the condition's reason.
            for name, reason in ((notemplate, "TemplateNotFound"), (nofit, "Unschedulable")):
                event = _wait(
                    lambda name=name, reason=reason: events(name).get(reason),
                    what=f"{name}'s {reason} Warning",
                )
                assert event.type == "Warning"
                assert event.reporting_component == "kubevisor-controller"

            # What only the node sees: the agent's Warning; its retries raise the count of
            # the one Event rather than posting more.
            event = _wait(
                lambda: (e := events(noimage).get("ImageNotFound")) and e.count >= 2 and e,
                what="the agent's ImageNotFound Warning, repeated",
            )
            assert event.type == "Warning"
            assert (event.reporting_component, event.reporting_instance) == (
                "kubevisor-agent", NODE,
            )  # fmt: skip
            assert "not-on-node" in event.message
            assert event.last_timestamp >= event.first_timestamp
            listed = core.list_namespaced_event(NS, field_selector=f"involvedObject.name={noimage}")
            assert [e.reason for e in listed.items].count("ImageNotFound") == 1

            for name in names:
                custom.delete_namespaced_custom_object(G, V, NS, VMS, name)
            for name in names:
                _wait(lambda name=name: gone(name), what=f"{name} deleted")
    finally:
        for name in names:
            with contextlib.suppress(kubernetes.client.ApiException):
                custom.patch_namespaced_custom_object(
                    G, V, NS, VMS, name, {"metadata": {"finalizers": None}}
                )
            with contextlib.suppress(kubernetes.client.ApiException):
                custom.delete_namespaced_custom_object(G, V, NS, VMS, name)
        with contextlib.suppress(kubernetes.client.ApiException):
            coord.delete_namespaced_lease(NODE, LEASE_NS)
