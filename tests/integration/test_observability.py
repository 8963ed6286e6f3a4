"""Metrics and Events of the real processes against a real API server.

The real ``kubevisor-controller`` and the real ``kubevisor-agent`` (libvirt's test
driver: a real driver with a fake hypervisor; netlink in a namespace the test makes),
each with ``--metrics-port``: a VM and a VRF are created, and the scraped series
(parsed with prometheus_client's own parser) move as the objects do: the VM's reconcile
passes are counted per kind, it shows up Running in both processes' phase gauges, its
start is timed, the agent's status writes are counted, the VRF's installed routes are
the agent's figure. The Events of the transitions (the VM placed and Running, the VRF
Ready) are on the objects, with their reason and a reference naming them.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubevisor.api import groups
from kubevisor.devenv import scraping, testing

pytestmark = pytest.mark.integration

NS = "kvobs-test"
LEASE_NS = "kvobs-leases"  # this test's own: no other test's fake node gets the VM
NODE = "kvobs-node"
SELECT = {"kvobs": "yes"}
G, V = groups.GROUP, groups.VERSION


def _wait(predicate: Callable[[], Any], *, timeout: float = 60, what: str) -> Any:
    return testing.wait_for(predicate, timeout=timeout, what=what)


@pytest.fixture
def node_netns() -> Iterator[str]:
    """The agent's node: a network namespace holding the node bridge kvbr0."""
    testing.require_tools("ip")
    name = f"kvobs-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "kvbr0", "type", "bridge"], check=True)
        yield name
    finally:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        for ns in [n for n in listed.stdout.split() if n.startswith(f"{name}-vrf-")] + [name]:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def _scraped(port: int) -> dict[Any, float] | None:
    try:
        return scraping.scrape(port)
    except OSError:
        return None


def test_metrics_and_events_follow_a_vm_and_a_vrf(
    cluster: Any, tmp_path: Path, node_netns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kubernetes

    testing.require_module("libvirt")
    testing.require_tools("qemu-img")
    custom = kubernetes.client.CustomObjectsApi(cluster.api)
    core = kubernetes.client.CoreV1Api(cluster.api)
    coord = kubernetes.client.CoordinationV1Api(cluster.api)
    testing.ensure_namespace(core, NS)
    suffix = uuid.uuid4().hex[:6]
    vm, vrf, segment = f"vm-{suffix}", f"vrf-{suffix}", f"kvo{suffix}"

    def get(plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = custom.get_namespaced_custom_object(G, V, NS, plural, name)
        return obj

    def gone(plural: str, name: str) -> bool:
        try:
            get(plural, name)
        except kubernetes.client.ApiException as exc:
            return exc.status == 404
        return False

    def events(name: str) -> dict[str, Any]:
        """reason -> the Event, of the Events whose involvedObject is ``name``."""
        listed = core.list_namespaced_event(NS, field_selector=f"involvedObject.name={name}")
        return {e.reason: e for e in listed.items}

    images = tmp_path / "images"
    images.mkdir()
    made = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(images / "tiny.qcow2"), "16M"],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    agent_port, controller_port = scraping.free_port(), scraping.free_port()
    agent_bin = Path(sys.executable).with_name("kubevisor-agent")
    argv = [
        str(agent_bin),
        f"--node={NODE}",
        f"--kubeconfig={cluster.kubeconfig}",
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
        f"--metrics-port={agent_port}",
    ]
    controller_argv = [
        sys.executable, "-m", "kubevisor.controller.main", f"--kubeconfig={cluster.kubeconfig}",
        f"--namespace={NS}", f"--metrics-port={controller_port}",
    ]  # fmt: skip
    monkeypatch.setenv("KUBEVISOR_LEASE_NAMESPACE", LEASE_NS)
    env = {"KUBEVISOR_LEASE_NAMESPACE": LEASE_NS}
    try:
        with (
            testing.running_process(argv, log=tmp_path / "agent.log", what="agent", env=env),
            testing.running_process(
                controller_argv, log=tmp_path / "controller.log", what="controller", env=env
            ),
        ):
            before = _wait(lambda: _scraped(controller_port), what="controller metrics")
            agent_before = _wait(lambda: _scraped(agent_port), what="agent metrics")
            reconciles = scraping.total(
                before, "kubevisor_controller_reconciles_total", kind="VirtualMachine"
            )
            custom.create_namespaced_custom_object(
                G, V, NS, "virtualmachines",
                {
                    "apiVersion": groups.API_VERSION, "kind": "VirtualMachine",
                    "metadata": {"name": vm},
                    "spec": {
                        "cpu": {"cores": 1}, "memory": "256Mi", "nodeSelector": SELECT,
                        "disks": [{"name": "root", "image": "tiny", "size": "1Gi"}],
                        "nics": [{"name": "eth0", "network": "default"}],
                    },
                },
            )  # fmt: skip
            custom.create_namespaced_custom_object(
                G, V, NS, "vrfs",
                {
                    "apiVersion": groups.API_VERSION, "kind": "VRF", "metadata": {"name": vrf},
                    "spec": {
                        "nodeSelector": SELECT,
                        "interfaces": [
                            {"name": "h0", "network": segment, "addresses": ["10.9.0.1/24"]}
                        ],
                        "routes": [{"prefix": "10.99.0.0/24", "via": "10.9.0.254"}],
                    },
                },
            )  # fmt: skip
            _wait(
                lambda: (get("virtualmachines", vm).get("status") or {}).get("phase") == "Running",
                timeout=90,
                what="VM Running",
            )
            # The controller: passes counted for the kind, the VM Running in its gauge
            # (only this test's namespace is served), its start timed.
            after = _wait(
                lambda: (
                    (s := _scraped(controller_port))
                    and scraping.value(s, "kubevisor_controller_vms", phase="Running") == 1
                    and s
                ),
                what="controller's vms{phase=Running} == 1",
            )
            assert (
                scraping.total(
                    after, "kubevisor_controller_reconciles_total", kind="VirtualMachine"
                )
                > reconciles
            )
            timed = "kubevisor_controller_reconcile_duration_seconds_count"
            assert scraping.total(after, timed, kind="VirtualMachine") >= 1
            assert scraping.value(after, "kubevisor_controller_vm_start_seconds_count") == 1
            assert scraping.value(
                after, "kubevisor_controller_api_writes_total",
                verb="apply", resource="virtualmachines/status",
            ) >= 1  # fmt: skip
            # The agent: its VM Running in its gauge, its passes and status writes counted.
            agent_after = _wait(
                lambda: (
                    (s := _scraped(agent_port))
                    and scraping.value(s, "kubevisor_agent_vms", phase="Running") == 1
                    and s
                ),
                what="agent's vms{phase=Running} == 1",
            )
            for name, labels in (
                ("kubevisor_agent_reconciles_total", {"kind": "vms"}),
                ("kubevisor_agent_api_writes_total", {"resource": "virtualmachines/status"}),
            ):
                assert scraping.total(agent_after, name, **labels) > scraping.total(
                    agent_before, name, **labels
                ), (name, labels)
            # its Lease written (created before the first scrape, or renewed since)
            assert scraping.total(
                agent_after, "kubevisor_agent_api_writes_total", resource="leases"
            )
            # The VRF: Ready on its node; the agent reports the routes its entry says.
            _wait(
                lambda: (get("vrfs", vrf).get("status") or {}).get("phase") == "Ready",
                what="VRF Ready",
            )
            entry = get("vrfs", vrf)["status"]["nodes"][NODE]
            _wait(
                lambda: (
                    (s := _scraped(agent_port))
                    and (NS, vrf) in _vrf_series(s)
                    and _vrf_series(s)[(NS, vrf)] == entry["routesInstalled"]
                ),
                what=f"agent's vrf_routes_installed == {entry['routesInstalled']}",
            )

            # Events of the transitions, each naming its object.
            vm_uid = get("virtualmachines", vm)["metadata"]["uid"]
            seen = _wait(
                lambda: (e := events(vm)) and {"Scheduled", "Running"} <= set(e) and e,
                what="the VM's Scheduled and Running Events",
            )
            for reason in ("Scheduled", "Running"):
                ref = seen[reason].involved_object
                assert (ref.kind, ref.name, ref.namespace, ref.uid) == (
                    "VirtualMachine", vm, NS, vm_uid,
                ), reason  # fmt: skip
                assert seen[reason].type == "Normal"
            assert NODE in seen["Running"].message
            vrf_events = _wait(lambda: events(vrf).get("Ready"), what="the VRF's Ready Event")
            assert vrf_events.involved_object.kind == "VRF"
            assert vrf_events.involved_object.uid == get("vrfs", vrf)["metadata"]["uid"]

            # Deleted: the VM leaves both gauges.
            custom.delete_namespaced_custom_object(G, V, NS, "virtualmachines", vm)
            _wait(lambda: gone("virtualmachines", vm), what="VM finalized by the agent")
            _wait(
                lambda: (
                    (s := _scraped(controller_port)) is not None
                    and scraping.total(s, "kubevisor_controller_vms") == 0
                ),
                what="controller's vms gauge empty",
            )
            _wait(
                lambda: (
                    (s := _scraped(agent_port)) is not None
                    and scraping.total(s, "kubevisor_agent_vms") == 0
                ),
                what="agent's vms gauge empty",
            )
            custom.delete_namespaced_custom_object(G, V, NS, "vrfs", vrf)
            _wait(lambda: gone("vrfs", vrf), what="VRF finalized")
    finally:
        for plural, name in (("virtualmachines", vm), ("vrfs", vrf)):
            with contextlib.suppress(kubernetes.client.ApiException):
                custom.patch_namespaced_custom_object(
                    G, V, NS, plural, name, {"metadata": {"finalizers": None}}
                )
            with contextlib.suppress(kubernetes.client.ApiException):
                custom.delete_namespaced_custom_object(G, V, NS, plural, name)
        with contextlib.suppress(kubernetes.client.ApiException):
            coord.delete_namespaced_lease(NODE, LEASE_NS)


def _vrf_series(samples: scraping.Samples) -> dict[tuple[str, str], float]:
    out = {}
    for (name, labels), v in samples.items():
        if name == "kubevisor_agent_vrf_routes_installed":
            d = dict(labels)
            out[(d["namespace"], d["vrf"])] = v
    return out
