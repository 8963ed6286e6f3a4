"""VRF-lite through real netlink: two simulated nodes, red and blue with the same prefix.

Topology (every piece a network namespace this module creates and removes):

    fabric ns: bridges "red" and "blue" (stand-ins for two VLANs on the LAN)
    node A / node B ns: segment bridges br-red, br-blue, each with an uplink veth to
        the fabric bridge of its network, and a veth "eth-red2" to a host behind it
    hosts: red A 10.0.0.11, red B 10.0.0.12, blue A 10.0.0.21, blue B 10.0.0.22, all
        /24 via gateway 10.0.0.1 (the same prefix and gateway in both VRFs); red2 A/B
        10.0.2.11 behind node A's/B's "eth-red2" (a host interface taken into red);
        blue2 A/B 10.0.3.11 behind "eth-blue2" (taken into blue).

Isolation is checked on routed paths: red's hosts and blue's hosts both have a gateway
that would forward to 10.0.2.0/24 and 10.0.3.0/24 if the VRFs shared a table, so only
the separation of the VRFs keeps blue from red2 and red from blue2. (A ping to the other
VRF's hosts on 10.0.0.0/24 proves nothing: those sit on another bridge, ARP never
crosses.) The test also leaks blue's route into red's table on purpose and sees the
probe succeed, so the probe is known to be able to fail.

The agent code under test is `VRFRealizer` running against node A and node B, fed the
plans the agent makes from the controller's decisions (`vrfsplanning.decide`: conflicts
and tables are decided there, once). The test itself uses `ip`/`ping` as an independent
observer.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubevisor.agent.kernel import cgroups, probing, vrfrealizing
from kubevisor.agent.vrfs import planning
from kubevisor.controller.placement import placing
from kubevisor.controller.vrfs import planning as vrfsplanning
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

P = f"kvt{os.getpid() % 100000}"
NODES = ("a", "b")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def _ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    return _run(*argv, check=check).stdout


def _pings(ns: str, address: str) -> bool:
    """One ping from a namespace (busybox ping; the image has no iputils)."""
    ping = ["ping"] if shutil.which("ping") else ["busybox", "ping"]
    result = _run("ip", "netns", "exec", ns, *ping, "-c1", "-W1", address, check=False)
    return result.returncode == 0


def _pings_within(ns: str, address: str, *, deadline_s: float = 10.0) -> bool:
    """Reachability allowing for ARP/STP settling; polls, never sleeps blindly."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if _pings(ns, address):
            return True
    return False


def _netns_list() -> set[str]:
    return {line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()}


@dataclass
class Topology:
    fabric: str
    nodes: dict[str, str]
    hosts: dict[str, str]


def _add_host(
    node_ns: str, host_ns: str, node_if: str, address: str, gw: str, br: str | None
) -> None:
    _ip("netns", "add", host_ns)
    _ip(
        "link", "add", node_if, "type", "veth", "peer", "name", "eth0", "netns", host_ns, ns=node_ns
    )
    if br:
        _ip("link", "set", node_if, "master", br, "up", ns=node_ns)
    _ip("link", "set", "lo", "up", ns=host_ns)
    _ip("link", "set", "eth0", "up", ns=host_ns)
    _ip("addr", "add", address, "dev", "eth0", ns=host_ns)
    _ip("route", "add", "default", "via", gw, ns=host_ns)


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    testing.require_root("to build network namespaces")
    testing.require_tools("ip")
    created: list[str] = []
    topo = Topology(fabric=f"{P}-fab", nodes={}, hosts={})
    try:
        _ip("netns", "add", topo.fabric)
        created.append(topo.fabric)
        for net in ("red", "blue"):
            _ip("link", "add", net, "type", "bridge", ns=topo.fabric)
            _ip("link", "set", net, "up", ns=topo.fabric)
        for node in NODES:
            node_ns = f"{P}-{node}"
            _ip("netns", "add", node_ns)
            created.append(node_ns)
            topo.nodes[node] = node_ns
            _ip("link", "set", "lo", "up", ns=node_ns)
            for net in ("red", "blue"):
                _ip("link", "add", f"br-{net}", "type", "bridge", ns=node_ns)
                _ip("link", "set", f"br-{net}", "up", ns=node_ns)
                _ip(
                    "link",
                    "add",
                    f"up-{net}",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    f"{node}-{net}",
                    "netns",
                    topo.fabric,
                    ns=node_ns,
                )
                _ip("link", "set", f"up-{net}", "master", f"br-{net}", "up", ns=node_ns)
                _ip("link", "set", f"{node}-{net}", "master", net, "up", ns=topo.fabric)
            index = NODES.index(node) + 1
            for key, net, address in (
                (f"red-{node}", "red", f"10.0.0.1{index}/24"),
                (f"blue-{node}", "blue", f"10.0.0.2{index}/24"),
            ):
                host_ns = f"{P}-h{key}"
                created.append(host_ns)
                _add_host(node_ns, host_ns, f"h-{net}", address, "10.0.0.1", f"br-{net}")
                topo.hosts[key] = host_ns
            for net, address, gw in (("red2", "10.0.2.11/24", "10.0.2.1"),
                                     ("blue2", "10.0.3.11/24", "10.0.3.1")):  # fmt: skip
                host_ns = f"{P}-h{net}-{node}"
                created.append(host_ns)
                _add_host(node_ns, host_ns, f"eth-{net}", address, gw, None)
                topo.hosts[f"{net}-{node}"] = host_ns
        yield topo
    finally:
        for ns in reversed(created):
            _ip("netns", "del", ns, check=False)


def _bridge(network: str, vlan: int | None) -> str:
    return f"br-{network}"


Spec = dict[str, Any]


def _decide(vrf_specs: dict[str, Spec]) -> tuple[planning.NodePlan, dict[str, str]]:
    """The controller's decisions over VRFs created in this order (one per second), then
    the node's plan of the accepted ones; returns (plan, refusal reason by name)."""
    items = [
        vrfsplanning.item_from(
            {
                "metadata": {
                    "namespace": "ns",
                    "name": name,
                    "generation": 1,
                    "creationTimestamp": f"2025-01-01T00:00:{n:02d}Z",
                },
                "spec": spec,
            }
        )
        for n, (name, spec) in enumerate(vrf_specs.items())
    ]
    decided = vrfsplanning.decide(items, [placing.Node(node) for node in NODES])
    assigned: dict[str, planning.Assigned] = {}
    refused: dict[str, str] = {}
    for item in items:
        decision = decided[item.key]
        if decision.reason or decision.table is None or item.spec is None:
            refused[item.name] = f"{decision.reason}: {decision.message}"
        else:
            assigned[item.name] = planning.Assigned(item.spec, decision.table)
    plan = planning.plan_node(assigned, bridge_for=_bridge, kernel_has_vrf=False)
    return plan, refused


RED: Spec = {
    "interfaces": [
        {"name": "red0", "network": "red", "addresses": ["10.0.0.1/24"]},
        {"name": "red2", "hostInterface": "eth-red2", "addresses": ["10.0.2.1/24"]},
    ],
    "routes": [
        {"prefix": "192.168.50.0/24", "via": "10.0.0.11"},
        {"prefix": "203.0.113.0/24", "type": "blackhole"},
        {"prefix": "198.51.100.0/24", "device": "red2", "metric": 5},
    ],
    "resources": {"cpu": "200m", "memory": "64Mi"},
}
BLUE: Spec = {
    "interfaces": [
        {"name": "blue0", "network": "blue", "addresses": ["10.0.0.1/24"]},
        {"name": "blue2", "hostInterface": "eth-blue2", "addresses": ["10.0.3.1/24"]},
    ],
    "routes": [
        {"prefix": "192.168.50.0/24", "via": "10.0.0.22"},
        {"prefix": "203.0.113.0/24", "type": "unreachable"},
    ],
}
GREEN_CLASH: Spec = {
    "interfaces": [{"name": "green0", "network": "red", "addresses": ["10.9.0.1/24"]}],
}


@dataclass
class Node:
    ns: str
    realizer: vrfrealizing.VRFRealizer
    plan: planning.NodePlan
    refused: dict[str, str]


@pytest.fixture
async def nodes(topology: Topology) -> AsyncIterator[dict[str, Node]]:
    """Both nodes with red and blue applied; everything removed afterwards, pass or fail."""
    backend = await asyncio.to_thread(probing.detect_backend)
    if backend == "vrf":
        print("kernel has l3mdev VRF; this module exercises the netns backend explicitly")
    result: dict[str, Node] = {}
    try:
        for node, ns in topology.nodes.items():
            realizer = vrfrealizing.VRFRealizer(node_netns=ns)
            first, _ = _decide({"red": RED, "blue": BLUE})
            result[node] = Node(ns, realizer, first, {})
            for desired in first.desired.values():
                status = await realizer.apply(desired)
                assert status["ready"], status
            # green arrives later and wants red's segment: the realized VRFs keep it
            result[node].plan, result[node].refused = _decide(
                {"red": RED, "blue": BLUE, "green": GREEN_CLASH}
            )
            assert result[node].plan.desired == first.desired
            for desired in result[node].plan.desired.values():
                await realizer.apply(desired)
        yield result
    finally:
        for entry in result.values():
            for name in ("red", "blue", "green"):
                await entry.realizer.remove(name)
            entry.realizer.close()


async def test_red_reaches_red_never_blue(topology: Topology, nodes: dict[str, Node]) -> None:
    red_a, red_b = topology.hosts["red-a"], topology.hosts["red-b"]
    blue_a = topology.hosts["blue-a"]
    assert _pings_within(red_a, "10.0.0.1"), "red host A cannot reach red's gateway"
    assert _pings_within(red_a, "10.0.0.12"), "red host A cannot reach red host B across nodes"
    assert _pings_within(red_b, "10.0.0.11"), "red host B cannot reach red host A"
    assert _pings_within(blue_a, "10.0.0.22"), "blue host A cannot reach blue host B"
    assert _pings_within(red_a, "10.0.2.11"), "red host A is not routed to red2 by the VRF"
    assert _pings_within(blue_a, "10.0.3.11"), "blue host A is not routed to blue2 by the VRF"
    # routed targets only the other VRF's table knows: the VRF separation alone blocks them
    assert not _pings(red_a, "10.0.3.11"), "red reaches blue2: the VRFs leak"
    assert not _pings(blue_a, "10.0.2.11"), "blue reaches red2: the VRFs leak"
    # the gateway that answered red is red's: its MAC is red's anycast MAC
    neighbours = _ip("neigh", "show", "10.0.0.1", ns=red_a)
    assert planning.interface_mac("red", "red0") in neighbours
    neighbours = _ip("neigh", "show", "10.0.0.1", ns=blue_a)
    assert planning.interface_mac("blue", "blue0") in neighbours


async def test_the_isolation_probe_sees_a_leak(topology: Topology, nodes: dict[str, Node]) -> None:
    """Leak blue's route into red's table (a veth between the two VRFs, the route to
    blue2 in red's table, the way back in blue's): the probe of the test above must then
    succeed; with the leak gone it must fail again."""
    red_a = topology.hosts["red-a"]
    leaks = []
    try:
        for node in nodes.values():
            red, blue = node.plan.desired["red"], node.plan.desired["blue"]
            red_ns = node.realizer.naming.vrf_netns("red")
            blue_ns = node.realizer.naming.vrf_netns("blue")
            _ip("link", "add", "leak-r", "type", "veth", "peer", "name", "leak-b",
                "netns", blue_ns, ns=red_ns)  # fmt: skip
            leaks.append(red_ns)
            _ip("addr", "add", "169.254.77.1/30", "dev", "leak-r", ns=red_ns)
            _ip("addr", "add", "169.254.77.2/30", "dev", "leak-b", ns=blue_ns)
            _ip("link", "set", "leak-r", "up", ns=red_ns)
            _ip("link", "set", "leak-b", "up", ns=blue_ns)
            _ip("route", "add", "10.0.3.0/24", "via", "169.254.77.2",
                "table", str(red.table), ns=red_ns)  # fmt: skip
            _ip("route", "add", "10.0.0.11/32", "via", "169.254.77.1",
                "table", str(blue.table), ns=blue_ns)  # fmt: skip
        assert _pings_within(red_a, "10.0.3.11"), "a leaked route is invisible to the probe"
    finally:
        for red_ns in leaks:
            _ip("link", "del", "leak-r", ns=red_ns, check=False)
    assert not _pings(red_a, "10.0.3.11")


async def test_routes_sit_in_the_right_tables(nodes: dict[str, Node]) -> None:
    for node in nodes.values():
        red, blue = node.plan.desired["red"], node.plan.desired["blue"]
        assert red.table != blue.table
        red_ns = node.realizer.naming.vrf_netns("red")
        blue_ns = node.realizer.naming.vrf_netns("blue")
        red_routes = _ip("route", "show", "table", str(red.table), ns=red_ns)
        assert "192.168.50.0/24 via 10.0.0.11 dev red0" in red_routes
        assert "blackhole 203.0.113.0/24" in red_routes
        assert "198.51.100.0/24 dev red2" in red_routes and "metric 5" in red_routes
        blue_routes = _ip("route", "show", "table", str(blue.table), ns=blue_ns)
        assert "192.168.50.0/24 via 10.0.0.22 dev blue0" in blue_routes
        assert "unreachable 203.0.113.0/24" in blue_routes
        assert _ip("route", "show", "table", str(blue.table), ns=red_ns, check=False).strip() == ""
        assert f"lookup {red.table}" in _ip("rule", "show", ns=red_ns)
        observed = await node.realizer.observe()
        assert observed["red"]["table"] == red.table
        assert observed["red"]["routesInstalled"] == 3
        assert observed["red"]["interfaces"] == ["red0", "red2"]
        assert observed["blue"]["routesInstalled"] == 2
        assert observed["blue"]["interfaces"] == ["blue0", "blue2"]


async def test_drift_is_repaired(topology: Topology, nodes: dict[str, Node]) -> None:
    node = nodes["a"]
    red = node.plan.desired["red"]
    red_ns = node.realizer.naming.vrf_netns("red")
    _ip("route", "del", "192.168.50.0/24", "table", str(red.table), ns=red_ns)
    _ip("addr", "flush", "dev", "red0", ns=red_ns)
    node_side = node.realizer.naming.node_ifname("red", "red0")
    _ip("link", "set", node_side, "nomaster", ns=node.ns)
    assert (await node.realizer.observe())["red"]["routesInstalled"] == 2
    # (no reachability check here: red's anycast gateway on node B still answers)

    status = await node.realizer.apply(red)

    assert status["ready"] and status["routesInstalled"] == 3
    assert "192.168.50.0/24 via 10.0.0.11" in _ip(
        "route", "show", "table", str(red.table), ns=red_ns
    )
    assert "master br-red" in _ip("link", "show", node_side, ns=node.ns)
    assert "10.0.0.1/24" in _ip("addr", "show", "red0", ns=red_ns)
    assert _pings_within(topology.hosts["red-a"], "10.0.2.11")
    # a second pass with nothing to do changes nothing
    assert await node.realizer.apply(red) == status


async def test_conflicting_vrf_is_refused_and_not_realized(nodes: dict[str, Node]) -> None:
    for node in nodes.values():
        assert "green" not in node.plan.desired
        assert node.refused["green"].startswith("InterfaceConflict:")
        assert "VRF ns/red" in node.refused["green"]
        assert node.realizer.naming.vrf_netns("green") not in _netns_list()
        assert "green" not in await node.realizer.observe()


def test_duplicate_table_is_refused() -> None:
    result, refused = _decide({"red": {**RED, "table": 1234}, "blue": {**BLUE, "table": 1234}})
    assert list(result.desired) == ["red"]
    assert refused["blue"].startswith("TableConflict:")


async def test_resource_context(nodes: dict[str, Node]) -> None:
    node = nodes["a"]
    context = cgroups.CgroupContext("red", parent=node.realizer.naming.cgroup_parent)
    if context.version == "none":
        testing.absent("no cpu+memory cgroup controllers on this host", setup_provides=False)
    assert context.limits() == planning.Limits(cpu_quota_us=20_000, memory_bytes=64 << 20)
    process = await node.realizer.launch("red", ["sleep", "600"])
    try:
        assert process.pid in context.pids()
        red_ns = Path("/run/netns") / node.realizer.naming.vrf_netns("red")
        assert os.stat(f"/proc/{process.pid}/ns/net").st_ino == os.stat(red_ns).st_ino
        usage = (await node.realizer.observe())["red"]["usage"]
        assert usage["memoryBytes"] > 0 and usage["cpuSeconds"] >= 0
    finally:
        await node.realizer.remove("red")
        process.wait()
    assert not context.exists()


async def test_removal_leaves_nothing(topology: Topology, nodes: dict[str, Node]) -> None:
    for node in nodes.values():
        assert re.search(r": kv[0-9a-f]{11}@", _ip("-o", "link", "show", ns=node.ns))
    for node in nodes.values():
        for name in ("red", "blue"):
            await node.realizer.remove(name)
            await node.realizer.remove(name)  # idempotent
    for node in nodes.values():
        assert await node.realizer.observe() == {}
        links = _ip("-o", "link", "show", ns=node.ns)
        assert not re.search(r": kv[0-9a-f]{11}@", links)
        assert "eth-red2" in links and "eth-blue2" in links, "host interfaces not handed back"
        assert "10.0.2.1" not in _ip("addr", "show", "eth-red2", ns=node.ns)
        assert "10.0.3.1" not in _ip("addr", "show", "eth-blue2", ns=node.ns)
        prefix = node.realizer.naming.netns_prefix
        assert not any(ns.startswith(prefix) for ns in _netns_list())
        parent = node.realizer.naming.cgroup_parent
        version = cgroups.detect_version()
        for controller in ("cpu", "cpuacct", "memory") if version == "v1" else ("",):
            assert not (cgroups.CGROUP_ROOT / controller / parent).exists()
