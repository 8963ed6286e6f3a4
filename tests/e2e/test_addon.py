"""The Helm chart as real pods on a real kubelet: ``helm install``, the controller, agent
and gateway pods Ready, the gateway answering through its Services, the example VM boots
in QEMU through the agent pod, and after the VM is deleted ``helm uninstall`` leaves no
pod, domain or tap behind.

The cluster is :mod:`kubevisor.devenv.addon`: the control plane plus kube-controller-
manager, kube-scheduler, a kubelet and containerd on this host; the hypervisor behind the
node is one simulated node (its libvirtd and network namespace), reached by the agent pod
through hostPath mounts. Nothing is faked; what cannot run here skips with its reason.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubevisor.devenv import addon, guest, kubelets, testing
from kubevisor.devenv import cluster as devcluster

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "kvaddon"
VM = "tiny-1"  # docs/examples/vm.yaml, applied unchanged


@pytest.fixture(scope="module")
def dev() -> Iterator[addon.AddonCluster]:
    testing.require_root("a kubelet node (containerd, cgroups, mounts)")
    testing.require_tools(
        "containerd", "containerd-shim-runc-v2", "runc", "ctr", "mmdebstrap", "iptables-save",
        "libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "nsenter", "virsh",
    )  # fmt: skip
    if not (kubelets.CNI_BIN_DIR / "bridge").exists():
        testing.absent(f"no CNI plugins in {kubelets.CNI_BIN_DIR} (containernetworking-plugins)")
    testing.require_tiny_guest(devcluster.GUEST_CACHE)
    host_before = _host_state()
    try:
        dev = addon.up(CLUSTER)
    except BaseException:  # a cluster that cannot start is a failure, not a skip
        addon.down(CLUSTER)
        raise
    try:
        yield dev
    finally:
        leftovers = addon.down(CLUSTER)
        print(f"addon down: cleaned {leftovers}")
        # the rest of the suite runs on this host: what the kubelet changed is undone
        assert _host_state() == host_before


def _host_state() -> dict[str, object]:
    """What the kubelet changes on a host: sysctls, iptables chains, kubepods cgroups."""
    return {
        "sysctls": kubelets.read_sysctls(),
        "chains": {t: kubelets.iptables_chains(t) for t in ("iptables", "ip6tables")},
        "kubepods": sorted(str(p) for p in kubelets.CGROUP_ROOT.glob("*/kubepods")),
    }


def _json(dev: addon.AddonCluster, *args: str) -> Any:
    return json.loads(dev.run("kubectl", *args, "-o", "json"))


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _vm(dev: addon.AddonCluster) -> dict[str, Any] | None:
    try:
        vm: dict[str, Any] = _json(dev, "get", "virtualmachine", VM)
    except RuntimeError:
        return None
    return vm


def _virsh(dev: addon.AddonCluster, *args: str) -> str:
    return subprocess.run(
        ["virsh", "-q", "-c", dev.node.libvirt_uri, *args],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip


def _links(dev: addon.AddonCluster) -> set[str]:
    out = subprocess.run(
        ["ip", "-n", dev.node.netns, "-j", "link", "show"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {link["ifname"] for link in json.loads(out)}


@contextlib.contextmanager
def _port_forward(dev: addon.AddonCluster, service: str, port: int) -> Iterator[int]:
    """``kubectl port-forward svc/<service> :<port>``: the local port it listens on.

    Through the Service (its selector and named targetPort pick the pod and its port) and
    the kubelet's port-forward. Not the ClusterIP from the node: this cluster runs no
    kube-proxy (devenv/addon: pods use the host network), so nothing routes a ClusterIP.
    """
    proc = subprocess.Popen(
        [str(dev.kubectl), f"--kubeconfig={dev.kubeconfig}", "port-forward",
         "-n", addon.NAMESPACE, f"svc/{service}", f":{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:41234 -> 8080"
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert found, f"port-forward svc/{service}: {line}{proc.stderr.read()}"
        yield int(found.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return response.status, response.read().decode(errors="replace")


def _gateway_answers_through_its_services(dev: addon.AddonCluster) -> None:
    """The gateway's Service serves its health endpoint, its metrics Service the gateway's
    series, each reached by the Service's port (a request to the pod, not the host)."""
    services = _json(dev, "get", "services", "-n", addon.NAMESPACE,
                     "-l", "app.kubernetes.io/component=gateway")["items"]  # fmt: skip
    by_port = {s["spec"]["ports"][0]["name"]: s for s in services}
    assert set(by_port) == {"http", "metrics"}, sorted(by_port)
    web, metrics = by_port["http"], by_port["metrics"]
    with _port_forward(dev, web["metadata"]["name"], web["spec"]["ports"][0]["port"]) as port:
        status, body = _get(port, "/healthz")
        assert status == 200, body
    name, number = metrics["metadata"]["name"], metrics["spec"]["ports"][0]["port"]
    with _port_forward(dev, name, number) as port:
        status, body = _get(port, "/metrics")
        assert status == 200 and "kubevisor_gateway_sessions_open" in body, body[:500]


def test_chart_runs_a_vm_and_uninstalls_clean(dev: addon.AddonCluster) -> None:
    addon.helm_install(dev)
    pods = _json(dev, "get", "pods", "-n", addon.NAMESPACE)["items"]
    by_component = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]: p
        for p in pods
        if p["metadata"].get("deletionTimestamp") is None
    }
    assert set(by_component) == {"controller", "agent", "gateway"}, sorted(by_component)
    for component, pod in by_component.items():
        assert _ready(pod), f"{component} pod not Ready: {pod['status']}"
        assert pod["spec"]["nodeName"] == addon.NODE
        assert pod["spec"]["containers"][0]["image"] == dev.image
    assert by_component["agent"]["spec"]["containers"][0]["securityContext"]["privileged"]
    _gateway_answers_through_its_services(dev)

    dev.run("kubectl", "apply", "-f", str(REPO / "docs/examples/vmtemplate.yaml"),
            "-f", str(REPO / "docs/examples/vm.yaml"))  # fmt: skip

    def running() -> dict[str, Any] | None:
        vm = _vm(dev)
        return vm if vm and (vm.get("status") or {}).get("phase") == "Running" else None

    vm = testing.wait_for(running, timeout=240, what=f"VM {VM} Running", show=lambda: _vm(dev))
    assert vm is not None
    st = vm["status"]
    assert st["nodeName"] == addon.NODE
    domain = f"default_{VM}"
    assert domain in _virsh(dev, "list", "--name").split()
    console = Path(st["consoleLog"])
    testing.wait_for(
        lambda: console.exists()
        and guest.READY_MARKER in console.read_text(errors="replace"),
        timeout=240, what="guest ready on the serial console",
        show=lambda: console.read_text(errors="replace")[-500:] if console.exists() else None,
    )  # fmt: skip
    log = console.read_text(errors="replace")
    assert guest.BOOTED_MARKER in log
    macs = {i["name"]: i["mac"] for i in st["interfaces"]}
    assert f"{guest.MAC_MARKER}{macs['eth0']}" in log
    # the agent that did it is the pod: its log (read through the kubelet) names the VM
    agent_log = dev.run("kubectl", "logs", "-n", addon.NAMESPACE,
                        by_component["agent"]["metadata"]["name"])  # fmt: skip
    assert VM in agent_log
    xml = ET.fromstring(_virsh(dev, "dumpxml", domain))
    taps = {t.get("dev") for t in xml.findall("devices/interface/target")}
    assert taps and taps <= _links(dev), (taps, _links(dev))

    dev.run("kubectl", "delete", "virtualmachine", VM, "--wait=false")
    testing.wait_for(lambda: _vm(dev) is None, timeout=120, what=f"VM {VM} deleted")
    addon.helm_uninstall(dev)
    testing.wait_for(
        lambda: not _json(dev, "get", "pods", "-n", addon.NAMESPACE)["items"],
        timeout=120, what="the release's pods gone",
    )  # fmt: skip
    assert _virsh(dev, "list", "--all", "--name").split() == []
    assert not taps & _links(dev)
    dev.run("kubectl", "delete", "-f", str(REPO / "docs/examples/vmtemplate.yaml"))
