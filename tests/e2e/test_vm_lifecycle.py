"""A VM from a template boots in real QEMU through controller + agent, stops, and is
deleted with its disk, on a dev cluster of simulated nodes (devenv/cluster.py)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import nodes, testing

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "kve2e"


def _poll(what: str, check: Callable[[], Any], *, limit: float) -> Any:
    return testing.wait_for(check, timeout=limit, what=what, every=0.2)


@pytest.fixture(scope="module")
def dev() -> Iterator[devcluster.DevCluster]:
    with testing.dev_cluster(CLUSTER, nodes_count=2, stop_timeout=5.0) as dev:
        yield dev


def _vm(dev: devcluster.DevCluster, name: str) -> dict[str, Any] | None:
    proc = subprocess.run(
        [str(dev.kubectl), f"--kubeconfig={dev.kubeconfig}", "get", "virtualmachine", name,
         "-o", "yaml"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return yaml.safe_load(proc.stdout) if proc.returncode == 0 else None


_RFB_PROBE = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20) as s:
    f = s.makefile("rwb")
    banner = f.read(12)
    f.write(banner)
    f.flush()
    count = f.read(1)[0]
    print(banner.decode().strip(), *f.read(count))
"""


def _rfb_handshake(dev: devcluster.DevCluster, host: str, port: int) -> tuple[str, list[int]]:
    """Connect to the VNC display from the fabric (where clients reach nodes) as an RFB
    3.8 client: the server's banner and the security types it offers (1 None, 2 VNC
    password)."""
    proc = subprocess.run(
        ["ip", "netns", "exec", nodes.fabric_netns_name(dev.name), sys.executable, "-c",
         _RFB_PROBE, host, str(port)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, f"no VNC server at {host}:{port}: {proc.stderr}"
    words = proc.stdout.split()
    return " ".join(words[:2]), [int(w) for w in words[2:]]


def test_boot_stop_delete(dev: devcluster.DevCluster) -> None:
    dev.run_kubectl("apply", "-f", str(REPO / "docs/examples/vmtemplate.yaml"))
    vm_yaml = yaml.safe_load((REPO / "docs/examples/vm.yaml").read_text())
    vm_yaml["metadata"]["name"] = "e2e-1"
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(vm_yaml))

    def running() -> dict[str, Any] | None:
        vm = _vm(dev, "e2e-1")
        return vm if vm and (vm.get("status") or {}).get("phase") == "Running" else None

    vm = _poll("phase Running", running, limit=180)
    st = vm["status"]
    node = next(n for n in dev.nodes if n.name == st["nodeName"])
    assert st["display"] == {"type": "vnc", "host": node.fabric_ip, "port": st["display"]["port"]}
    # the reported port is a live VNC server, open (no password asked for in vm.yaml)
    assert _rfb_handshake(dev, node.fabric_ip, st["display"]["port"]) == ("RFB 003.008", [1])
    macs = {i["name"]: i["mac"] for i in st["interfaces"]}
    assert macs["eth1"] == "52:54:00:12:34:56"
    assert "kubevisor.io/agent-cleanup" in vm["metadata"]["finalizers"]
    console = Path(st["consoleLog"])

    def booted() -> bool:
        return console.exists() and "kubevisor-guest: ready" in console.read_text(errors="replace")

    _poll("guest ready on the serial console", booted, limit=240)
    log = console.read_text(errors="replace")
    assert f"kubevisor-guest: eth0 mac={macs['eth0']}" in log  # the MAC status reports
    disk = node.shared_dir / "disks/default/e2e-1/root.qcow2"
    assert disk.exists()
    # runningAt is what the start benchmark reads (apply -> Running); only its order is
    # asserted here, never a duration.
    assert st["runningAt"] >= vm["metadata"]["creationTimestamp"]

    # Stop: the busybox guest ignores ACPI, so the agent destroys it after the timeout.
    dev.run_kubectl("patch", "virtualmachine", "e2e-1", "--type=merge",
             "-p", '{"spec":{"runStrategy":"Halted"}}')  # fmt: skip
    _poll(
        "phase Stopped",
        lambda: ((_vm(dev, "e2e-1") or {}).get("status") or {}).get("phase") == "Stopped",
        limit=120,
    )
    assert disk.exists()  # stopping keeps disks

    dev.run_kubectl("delete", "virtualmachine", "e2e-1", "--wait=false")
    _poll("VM deleted", lambda: _vm(dev, "e2e-1") is None, limit=120)
    assert not disk.exists()
    assert (devcluster.IMAGE_DIR / "tiny" / "tiny.qcow2").exists()  # base image untouched


def test_vnc_password_from_the_secret_is_required(dev: devcluster.DevCluster) -> None:
    """display.passwordSecretRef: the agent reads the Secret, the domain carries that
    password, and the VNC server offers only password authentication."""
    dev.run_kubectl("apply", "-f", str(REPO / "docs/examples/vmtemplate.yaml"))
    password = "kve2e-pw"  # VNC (DES) passwords are at most 8 characters; libvirt refuses more
    dev.run_kubectl("create", "secret", "generic", "e2e-vnc", f"--from-literal=password={password}")
    vm_yaml = yaml.safe_load((REPO / "docs/examples/vm.yaml").read_text())
    vm_yaml["metadata"]["name"] = "e2e-vnc"
    vm_yaml["spec"]["nics"] = [{"name": "eth0", "network": "default"}]
    vm_yaml["spec"]["display"] = {
        "vnc": True,
        "passwordSecretRef": {"name": "e2e-vnc", "key": "password"},
    }
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(vm_yaml))
    try:

        def running() -> dict[str, Any] | None:
            vm = _vm(dev, "e2e-vnc")
            return vm if vm and (vm.get("status") or {}).get("phase") == "Running" else None

        st = testing.wait_for(
            running, timeout=180, what="phase Running", show=lambda: _vm(dev, "e2e-vnc")
        )["status"]
        node = next(n for n in dev.nodes if n.name == st["nodeName"])
        xml = subprocess.run(
            ["virsh", "-q", "-c", node.libvirt_uri, "dumpxml", "--security-info",
             "default_e2e-vnc"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        graphics = ET.fromstring(xml).find("devices/graphics")
        assert graphics is not None and graphics.get("passwd") == password
        port = st["display"]["port"]
        assert _rfb_handshake(dev, node.fabric_ip, port) == ("RFB 003.008", [2])
    finally:
        dev.run_kubectl("delete", "virtualmachine", "e2e-vnc", "--wait=false")
        _poll("VM deleted", lambda: _vm(dev, "e2e-vnc") is None, limit=120)
        dev.run_kubectl("delete", "secret", "e2e-vnc")
