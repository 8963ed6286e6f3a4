"""A VM NIC on a segment whose gateway lives in a VRF is routed only inside that VRF.

End to end through the real processes: ``kubevisor-controller`` and ``kubevisor-agent``
(its VM loop *and* VRF loop, ``python -m kubevisor.agent.main``) on a simulated node with
its own libvirtd and QEMU (TCG) guests, started by ``devenv.cluster``.

Topology on node-1 (agent flags ``--network=red --network=blue``: managed, node-local
networks whose bridges ``kvn-red``/``kvn-blue`` the agent creates on demand):

    VRF red:  red0 on network red, 10.0.0.1/24; srv0 = host interface ``srv-red`` (a veth
              into the test's netns "server", 172.16.0.2/24), 172.16.0.1/24, and a route
              172.16.0.0/24 dev srv0
    VRF blue: blue0 on network blue, the SAME 10.0.0.1/24; nothing towards 172.16.0.0/24
    red-vm:   NIC on red,  10.0.0.10/24 via 10.0.0.1
    blue-vm:  NIC on blue, the SAME 10.0.0.10/24 via 10.0.0.1

Each guest pings its gateway and the server and prints markers on its serial console;
the test reads the console logs the VM status names. red-vm reaches both; blue-vm reaches
its own gateway but never the server (it lives only in red). The node's kernel shows each
VM's MAC as 10.0.0.10's neighbour in its own VRF's context only. No durations are
asserted; every wait polls a condition with a deadline.
"""

from __future__ import annotations

import copy
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import guest, nodes, testing

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "kvvrfvm"
NS = "default"
G, V = "kubevisor.io", "v1alpha1"
LEASE_NS = "kubevisor-system"
SERVER_NS = f"{CLUSTER}-server"
HOST_IF = "srv-red"
BOOT_LIMIT = 300.0
"""Seconds a TCG boot plus the guest's pings may take on a loaded host (a deadline)."""
MARK = "kvvrf-test:"

RED = {
    "interfaces": [
        {"name": "red0", "network": "red", "addresses": ["10.0.0.1/24"]},
        {"name": "srv0", "hostInterface": HOST_IF, "addresses": ["172.16.0.1/24"]},
    ],
    "routes": [{"prefix": "172.16.0.0/24", "device": "srv0"}],
}
BLUE = {"interfaces": [{"name": "blue0", "network": "blue", "addresses": ["10.0.0.1/24"]}]}

# The guest tries a few times before declaring a target unreachable (ARP and bridge
# learning on a loaded TCG host), then prints one result line per target.
PINGS = """
try() {{ n=0; while [ $n -lt 4 ]; do ping -c 3 -W 2 "$1" >/dev/null 2>&1 && return 0;
  n=$((n+1)); done; return 1; }}
for target in 10.0.0.1 172.16.0.2; do
  if try "$target"; then r=ok; else r=FAILED; fi
  echo "{mark} {vm} ping $target $r"
done
echo "{mark} {vm} done"
"""


def _poll(what: str, check: Callable[[], Any], *, limit: float = 120.0) -> Any:
    return testing.wait_for(check, timeout=limit, what=what, every=0.5)


def _run(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


class Env:
    """The dev cluster, a Kubernetes client, and probes into the node's kernel."""

    def __init__(self, dev: devcluster.DevCluster) -> None:
        import kubernetes

        self.dev = dev
        self.node = dev.nodes[0]
        api = kubernetes.config.new_client_from_config(config_file=str(dev.kubeconfig))
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.coord = kubernetes.client.CoordinationV1Api(api)
        self.ApiException = kubernetes.client.ApiException

    def create(self, plural: str, kind: str, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": f"{G}/{V}", "kind": kind,
                "metadata": {"name": name, "namespace": NS}, "spec": spec}  # fmt: skip
        self.custom.create_namespaced_custom_object(G, V, NS, plural, body)

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.custom.get_namespaced_custom_object(G, V, NS, plural, name))
        except self.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def status(self, plural: str, name: str) -> dict[str, Any]:
        return dict((self.get(plural, name) or {}).get("status") or {})

    def delete(self, plural: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(G, V, NS, plural, name)
        except self.ApiException as exc:
            if exc.status != 404:
                raise

    def segments(self) -> list[str] | None:
        """The node's Lease annotation ``kubevisor.io/segments``."""
        try:
            lease = self.coord.read_namespaced_lease(self.node.name, LEASE_NS)
        except self.ApiException:
            return None
        text = (lease.metadata.annotations or {}).get("kubevisor.io/segments")
        return None if text is None else list(yaml.safe_load(text))

    def on_node(self, *argv: str, check: bool = True) -> str:
        """Run a command in the node's mount namespace (where its agent made the VRF
        namespaces) and network namespace."""
        return _run(*nodes.node_full_exec_prefix(self.node), *argv, check=check)

    def vrf_netns(self, vrf: str) -> str:
        return f"{self.node.netns}-vrf-{NS}.{vrf}"

    def neighbours(self, netns: str | None, address: str) -> str:
        """``ip neigh`` lines for ``address`` in a VRF namespace (None: the node's own)."""
        where = ["-n", netns] if netns else []
        return self.on_node("ip", *where, "neigh", "show", address).strip()

    def link_exists(self, name: str) -> bool:
        proc = subprocess.run(["ip", "-n", self.node.netns, "link", "show", name],
                              capture_output=True, check=False)  # fmt: skip
        return proc.returncode == 0

    def console(self, vm: str) -> str:
        log = self.status("virtualmachines", vm).get("consoleLog")
        if not log or not Path(log).exists():
            return ""
        return Path(log).read_text(errors="replace")

    def results(self, vm: str) -> dict[str, str] | None:
        """``{target: "ok"|"FAILED"}`` once the guest's script is done, else None."""
        text = self.console(vm)
        if f"{MARK} {vm} done" not in text:
            return None
        found = re.findall(rf"{re.escape(MARK)} {re.escape(vm)} ping (\S+) (ok|FAILED)", text)
        return dict(found)


def _template(vm: str, network: str) -> dict[str, Any]:
    spec = copy.deepcopy(yaml.safe_load((REPO / "docs/examples/vmtemplate.yaml").read_text()))
    spec = dict(spec["spec"])
    spec["memory"] = "192Mi"
    spec["nics"] = [{"name": "eth0", "network": network}]
    spec["display"] = {"vnc": False}
    spec["boot"]["cmdline"] = guest.kernel_cmdline(
        ip="10.0.0.10/24", gateway="10.0.0.1", script=PINGS.format(mark=MARK, vm=vm)
    )
    assert "no_timer_check" in spec["boot"]["cmdline"]
    return spec


def _server_netns() -> None:
    """The server only red can reach: a veth from the node into the test's namespace."""
    _run("ip", "netns", "add", SERVER_NS)
    _run("ip", "-n", SERVER_NS, "link", "set", "lo", "up")


def _wire_server(node: nodes.SimNode) -> None:
    _run("ip", "-n", node.netns, "link", "add", HOST_IF, "type", "veth",
         "peer", "name", "eth0", "netns", SERVER_NS)  # fmt: skip
    _run("ip", "-n", SERVER_NS, "addr", "add", "172.16.0.2/24", "dev", "eth0")
    _run("ip", "-n", SERVER_NS, "link", "set", "eth0", "up")
    _run("ip", "-n", SERVER_NS, "route", "add", "default", "via", "172.16.0.1")


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    _run("ip", "netns", "del", SERVER_NS, check=False)
    with testing.dev_cluster(
        CLUSTER,
        nodes_count=1,
        stop_timeout=5.0,
        agent_args=("--network=red", "--network=blue", "--vrf-resync-seconds=5"),
        tools=(*testing.DEV_CLUSTER_TOOLS, "ip"),
    ) as dev:
        env = Env(dev)
        try:
            _server_netns()
            _wire_server(env.node)
            yield env
        finally:
            try:
                for vm in ("red-vm", "blue-vm"):
                    env.delete("virtualmachines", vm)
                for vrf in ("red", "blue"):
                    env.delete("vrfs", vrf)
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and (
                    any(env.get("virtualmachines", vm) for vm in ("red-vm", "blue-vm"))
                    or env.link_exists("kvn-red")
                    or env.link_exists("kvn-blue")
                ):
                    time.sleep(0.5)
            finally:
                for name in ("controller", f"agent-{env.node.name}"):
                    log = dev.log(name)
                    if log.exists():
                        print(f"--- {name} log (tail) ---")
                        print(log.read_text(errors="replace")[-4000:])
                _run("ip", "netns", "del", SERVER_NS, check=False)


@pytest.fixture(scope="module")
def booted(env: Env) -> Env:
    """Both VRFs realized on the node, then both VMs booted and done pinging."""
    env.create("vrfs", "VRF", "red", RED)
    env.create("vrfs", "VRF", "blue", BLUE)
    for vrf in ("red", "blue"):
        _poll(f"VRF {vrf} Ready on {env.node.name}",
              lambda v=vrf: (env.status("vrfs", v).get("nodes") or {})
              .get(env.node.name, {}).get("ready"), limit=120)  # fmt: skip
    for vm, network in (("red-vm", "red"), ("blue-vm", "blue")):
        env.create("vmtemplates", "VMTemplate", vm, _template(vm, network))
        env.create("virtualmachines", "VirtualMachine", vm,
                   {"runStrategy": "Always", "templateRef": {"name": vm}})  # fmt: skip
    for vm in ("red-vm", "blue-vm"):
        _poll(f"{vm} Running",
              lambda v=vm: env.status("virtualmachines", v).get("phase") == "Running",
              limit=BOOT_LIMIT)  # fmt: skip
    for vm in ("red-vm", "blue-vm"):
        _poll(f"{vm}: ping results on the serial console", lambda v=vm: env.results(v),
              limit=BOOT_LIMIT)  # fmt: skip
    for vm in ("red-vm", "blue-vm"):
        print(*(ln for ln in env.console(vm).splitlines() if MARK in ln), sep="\n")
    return env


def test_vm_nic_and_vrf_interface_share_the_managed_bridge(booted: Env) -> None:
    env = booted
    for vm, network in (("red-vm", "red"), ("blue-vm", "blue")):
        st = env.status("virtualmachines", vm)
        assert st["nodeName"] == env.node.name
        tap = st["interfaces"][0]["tap"]
        master = env.on_node("ip", "-o", "link", "show", tap)
        assert f"master kvn-{network}" in master, master
    bridges = env.on_node("ip", "-o", "link", "show", "type", "bridge")
    assert "kvn-red" in bridges and "kvn-blue" in bridges
    assert sorted(env.segments() or []) == ["blue", "red"]


def test_red_vm_reaches_its_gateway_and_the_server_only_red_routes_to(booted: Env) -> None:
    results = booted.results("red-vm")
    assert results == {"10.0.0.1": "ok", "172.16.0.2": "ok"}, booted.console("red-vm")[-2000:]


def test_blue_vm_reaches_its_own_gateway_but_never_reds_server(booted: Env) -> None:
    results = booted.results("blue-vm")
    assert results == {"10.0.0.1": "ok", "172.16.0.2": "FAILED"}, booted.console("blue-vm")[-2000:]


def test_each_vm_is_a_neighbour_in_its_own_vrf_only(booted: Env) -> None:
    env = booted
    macs = {
        vm: env.status("virtualmachines", vm)["interfaces"][0]["mac"].lower()
        for vm in ("red-vm", "blue-vm")
    }
    assert macs["red-vm"] != macs["blue-vm"]
    red = env.neighbours(env.vrf_netns("red"), "10.0.0.10").lower()
    blue = env.neighbours(env.vrf_netns("blue"), "10.0.0.10").lower()
    assert f"dev red0 lladdr {macs['red-vm']}" in red, red
    assert macs["blue-vm"] not in red, red
    assert f"dev blue0 lladdr {macs['blue-vm']}" in blue, blue
    assert macs["red-vm"] not in blue, blue
    # the node's own context routes nothing for 10.0.0.0/24
    assert env.neighbours(None, "10.0.0.10") == ""
    # the server learnt red's gateway only (its replies went back through red)
    server = _run("ip", "-n", SERVER_NS, "neigh", "show", "172.16.0.1")
    assert "lladdr" in server, server


def test_bridges_only_vrfs_use_survive_the_vms_and_go_with_the_vrfs(booted: Env) -> None:
    env = booted
    for vm in ("red-vm", "blue-vm"):
        env.delete("virtualmachines", vm)
    for vm in ("red-vm", "blue-vm"):
        _poll(f"{vm} deleted", lambda v=vm: env.get("virtualmachines", v) is None, limit=180)
    # the VM loop has declared it needs nothing; the VRFs still use both bridges
    assert env.link_exists("kvn-red") and env.link_exists("kvn-blue")
    assert sorted(env.segments() or []) == ["blue", "red"]
    env.delete("vrfs", "red")
    env.delete("vrfs", "blue")
    _poll("managed bridges removed with the last VRF",
          lambda: not env.link_exists("kvn-red") and not env.link_exists("kvn-blue"),
          limit=120)  # fmt: skip
    _poll("segment set empty", lambda: env.segments() == [], limit=60)
    assert env.link_exists(HOST_IF)  # red's host interface is back on the node
