"""How many API writes a VM needs to reach Running (issue 12): at most 4 including the
user's create, at most 2 of them status writes, counted against the real API server.

The real ``kubevisor-controller`` and ``kubevisor-agent`` (libvirt's test driver: a real
driver with a fake hypervisor; netlink in a namespace the test makes). Two counts, both
asserted: a watch opened before the create sees every version of the object the API
server stored up to the one showing Running (each accepted write that changes it is one
version); and both processes' write counters (``kubevisor_*_api_writes``), which also
count writes that changed nothing. No time is asserted.
"""

from __future__ import annotations

import itertools
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubevisor.api import groups
from kubevisor.devenv import scraping, testing

pytestmark = pytest.mark.integration

NS = "kvwrites-test"
LEASE_NS = "kvwrites-leases"  # this test's own: no other test's fake node gets the VM
NODE = "kvwrites-node"
G, V = groups.GROUP, groups.VERSION
VM_RESOURCES = ("virtualmachines", "virtualmachines/status")


@pytest.fixture
def node_netns() -> Iterator[str]:
    """The agent's node: a network namespace holding the node bridge kvbr0."""
    with testing.node_netns("kvwr") as name:
        yield name


def _scraped(port: int) -> scraping.Samples | None:
    try:
        return scraping.scrape(port)
    except OSError:
        return None


def _vm_writes(samples: scraping.Samples, metric: str) -> float:
    return sum(scraping.total(samples, metric, resource=r) for r in VM_RESOURCES)


AGENT_WRITES = "kubevisor_agent_api_writes_total"


def _body(name: str) -> dict[str, Any]:
    spec = {"cpu": {"cores": 1}, "memory": "64Mi", "disks": [], "display": {"vnc": False}}
    return {"apiVersion": groups.API_VERSION, "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}  # fmt: skip


def _phase(custom: Any, name: str) -> str | None:
    obj = custom.get_namespaced_custom_object(G, V, NS, "virtualmachines", name)
    return (obj.get("status") or {}).get("phase")


def _versions_until_running(custom: Any, name: str, since: str, seen: list[dict[str, Any]]) -> None:
    """Append every version of VM ``name`` stored after resourceVersion ``since`` until
    one shows phase Running."""
    import kubernetes

    w = kubernetes.watch.Watch()
    for event in w.stream(
        custom.list_namespaced_custom_object, G, V, NS, "virtualmachines",
        field_selector=f"metadata.name={name}", resource_version=since, timeout_seconds=120,
    ):  # fmt: skip
        seen.append(event["object"])
        if (event["object"].get("status") or {}).get("phase") == "Running":
            w.stop()


def test_a_vm_reaches_running_in_four_writes(cluster: Any, tmp_path: Path, node_netns: str) -> None:
    import kubernetes

    testing.require_module("libvirt")
    custom = kubernetes.client.CustomObjectsApi(cluster.api)
    core = kubernetes.client.CoreV1Api(cluster.api)
    testing.ensure_namespace(core, NS)
    vm, warm = f"vm-{uuid.uuid4().hex[:6]}", f"warm-{uuid.uuid4().hex[:6]}"
    agent_port, controller_port = scraping.free_port(), scraping.free_port()
    agent_argv = [
        str(Path(sys.executable).with_name("kubevisor-agent")),
        f"--node={NODE}", f"--kubeconfig={cluster.kubeconfig}",
        "--libvirt-uri=test:///default", f"--netns={node_netns}",
        f"--state-dir={tmp_path / 'state'}", f"--image-dir={tmp_path}",
        "--network=default=kvbr0", "--cpu=2", "--memory=4Gi", "--stop-timeout=5",
        f"--metrics-port={agent_port}",
    ]  # fmt: skip
    controller_argv = [
        sys.executable, "-m", "kubevisor.controller.main", f"--kubeconfig={cluster.kubeconfig}",
        f"--namespace={NS}", f"--metrics-port={controller_port}",
    ]  # fmt: skip
    env = {"KUBEVISOR_LEASE_NAMESPACE": LEASE_NS}
    seen: list[dict[str, Any]] = []
    try:
        with (
            testing.running_process(agent_argv, log=tmp_path / "agent.log", what="agent", env=env),
            testing.running_process(
                controller_argv, log=tmp_path / "controller.log", what="controller", env=env
            ),
        ):
            testing.wait_for(
                lambda: _scraped(controller_port) and _scraped(agent_port),
                timeout=60,
                what="both processes' metrics",
            )
            # a first VM Running proves the controller knows the node (a VM created before
            # that is rightly written Pending first, one more status write); it is not
            # counted, and the counters are read once its agent write is counted
            custom.create_namespaced_custom_object(G, V, NS, "virtualmachines", _body(warm))
            testing.wait_for(
                lambda: _phase(custom, warm) == "Running", timeout=60, what="warm-up VM Running"
            )
            testing.wait_for(
                lambda: _vm_writes(_scraped(agent_port) or {}, AGENT_WRITES) >= 1,
                timeout=30,
                what="the warm-up VM's agent write counted",
            )
            controller_before = _vm_writes(
                scraping.scrape(controller_port), "kubevisor_controller_api_writes_total"
            )
            agent_before = _vm_writes(scraping.scrape(agent_port), AGENT_WRITES)
            since = custom.list_namespaced_custom_object(G, V, NS, "virtualmachines")["metadata"][
                "resourceVersion"
            ]  # the watch starts here, so it misses no version
            watcher = threading.Thread(
                target=_versions_until_running, args=(custom, vm, since, seen), daemon=True
            )
            watcher.start()
            custom.create_namespaced_custom_object(G, V, NS, "virtualmachines", _body(vm))
            watcher.join(timeout=120)
            assert seen and (seen[-1].get("status") or {}).get("phase") == "Running", (
                f"VM not seen Running; versions: {[o.get('status') for o in seen]}"
            )
            status_versions = sum(
                1 for a, b in itertools.pairwise(seen) if a.get("status") != b.get("status")
            )
            assert len(seen) <= 4, (
                f"{len(seen)} versions: {[o['metadata'].get('managedFields') for o in seen]}"
            )
            assert status_versions <= 2, f"{status_versions} status writes to Running"
            meta = seen[-1]["metadata"]
            assert meta["labels"][groups.LABEL_NODE] == NODE
            assert set(meta["finalizers"]) == {groups.FINALIZER, groups.AGENT_FINALIZER}
            # the processes' own counts (a write that changed nothing is counted too);
            # the agent's Running write is counted once its response is back
            after = testing.wait_for(
                lambda: (
                    a := scraping.scrape(agent_port),
                    _vm_writes(a, AGENT_WRITES) > agent_before and a,
                )[1],
                timeout=30,
                what="the agent's status write counted",
            )
            agent_writes = _vm_writes(after, AGENT_WRITES) - agent_before
            controller_writes = (
                _vm_writes(
                    scraping.scrape(controller_port), "kubevisor_controller_api_writes_total"
                )
                - controller_before
            )
            assert agent_writes == 1, f"agent wrote the VM {agent_writes} times"
            assert controller_writes <= 2, (
                f"controller wrote the VM {controller_writes} times: "
                f"{[k for k in scraping.scrape(controller_port) if 'api_writes' in k[0]]}"
            )
            for name in (vm, warm):
                custom.delete_namespaced_custom_object(G, V, NS, "virtualmachines", name)
            testing.wait_for(
                lambda: (
                    not custom.list_namespaced_custom_object(G, V, NS, "virtualmachines")["items"]
                ),
                timeout=60,
                what="both VMs finalized by the agent",
            )
    finally:
        for name in (vm, warm):
            try:
                custom.patch_namespaced_custom_object(
                    G, V, NS, "virtualmachines", name, {"metadata": {"finalizers": None}}
                )
                custom.delete_namespaced_custom_object(G, V, NS, "virtualmachines", name)
            except kubernetes.client.ApiException as exc:
                if exc.status != 404:
                    raise
