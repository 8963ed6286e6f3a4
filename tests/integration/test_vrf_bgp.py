"""BGP between two nodes' VRF instances, each BIRD in its VRF's context; two VRFs with the
same addresses never learn each other's prefixes.

Topology (network namespaces this module creates and removes):

    fabric ns: bridges "red" and "blue" (two LAN segments)
    node A / node B ns: br-red, br-blue, each with an uplink veth to its fabric bridge

VRFs (realized by `VRFRealizer` on the netns backend, daemons run by `Supervisor`):
red-a on node A and red-b on node B on segment red, 10.0.0.1/24 and 10.0.0.2/24;
blue-a and blue-b on segment blue with the very same addresses. red-a announces
198.51.100.0/24 to red-b over eBGP, blue-a announces 203.0.113.0/24 to blue-b. (One VRF
object per node here because a VRF's addresses are the same on every node: per-node
addresses are not in the spec yet.)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from kubevisor.agent.kernel import vrfrealizing
from kubevisor.agent.vrfs import daemons, planning, supervising
from kubevisor.api import vrfs
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

P = f"kvb{os.getpid() % 100000}"
NODES = ("a", "b")
TABLES = {"red": 1001, "blue": 1002}
ANNOUNCED = {"red": "198.51.100.0/24", "blue": "203.0.113.0/24"}


def _ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check).stdout


@pytest.fixture(scope="module")
def topology() -> Iterator[dict[str, str]]:
    testing.require_root("to build network namespaces")
    testing.require_tools("ip", "bird", "birdc")
    names = {"fabric": f"{P}-fab", **{node: f"{P}-{node}" for node in NODES}}
    created: list[str] = []
    try:
        for ns in names.values():
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("link", "set", "lo", "up", ns=ns)
        for net in ("red", "blue"):
            _ip("link", "add", net, "type", "bridge", ns=names["fabric"])
            _ip("link", "set", net, "up", ns=names["fabric"])
            for node in NODES:
                ns = names[node]
                _ip("link", "add", f"br-{net}", "type", "bridge", ns=ns)
                _ip("link", "set", f"br-{net}", "up", ns=ns)
                _ip("link", "add", f"up-{net}", "type", "veth", "peer", "name",
                    f"{node}-{net}", "netns", names["fabric"], ns=ns)  # fmt: skip
                _ip("link", "set", f"up-{net}", "master", f"br-{net}", "up", ns=ns)
                _ip("link", "set", f"{node}-{net}", "master", net, "up", ns=names["fabric"])
        yield names
    finally:
        for ns in reversed(created):
            _ip("netns", "del", ns, check=False)


def _config(net: str, node: str) -> str:
    me, peer = ("10.0.0.1", "10.0.0.2") if node == "a" else ("10.0.0.2", "10.0.0.1")
    my_as, peer_as = (65001, 65002) if node == "a" else (65002, 65001)
    static = f"protocol static {{ ipv4; route {ANNOUNCED[net]} blackhole; }}" if node == "a" else ""
    return f"""
router id {me};
protocol device {{}}
protocol kernel {{ ipv4 {{ export where source = RTS_BGP; }}; kernel table {TABLES[net]}; }}
{static}
protocol bgp peer {{
    local {me} as {my_as};
    neighbor {peer} as {peer_as};
    connect delay time 1;
    connect retry time 1;
    ipv4 {{ import all; export where source = RTS_STATIC; }};
}}
"""


def _desired(net: str, node: str) -> planning.DesiredVRF:
    address = "10.0.0.1/24" if node == "a" else "10.0.0.2/24"
    spec = vrfs.VRFSpec.model_validate(
        {
            "backend": "netns",
            "interfaces": [{"name": f"{net}0", "network": net, "addresses": [address]}],
        }
    )
    return planning.plan(
        f"{net}-{node}",
        spec,
        table=TABLES[net],
        bridge_for=lambda n, v: f"br-{n}",
        kernel_has_vrf=False,
    )


@dataclass
class Node:
    realizer: vrfrealizing.VRFRealizer
    supervisor: supervising.Supervisor


@pytest.fixture
async def nodes(topology: dict[str, str]) -> AsyncIterator[dict[str, Node]]:
    result: dict[str, Node] = {}
    woken = asyncio.Event()
    try:
        for node in NODES:
            realizer = vrfrealizing.VRFRealizer(node_netns=topology[node])
            result[node] = Node(realizer, supervising.Supervisor(realizer, on_change=woken.set))
            for net in ("red", "blue"):
                status = await realizer.apply(_desired(net, node))
                assert status["ready"], status
                report = await result[node].supervisor.ensure(
                    f"{net}-{node}", daemons.Wanted("bird", _config(net, node))
                )
                assert report.problem is None, report
                assert report.status is not None and report.status["state"] == "Running"
        yield result
    finally:
        for node, entry in result.items():
            for net in ("red", "blue"):
                await entry.supervisor.stop(f"{net}-{node}")
                await entry.realizer.remove(f"{net}-{node}")
            entry.supervisor.close()
            entry.realizer.close()


def _table(node: Node, vrf: str, net: str) -> str:
    ns = node.realizer.naming.vrf_netns(vrf)
    return _ip("route", "show", "table", str(TABLES[net]), ns=ns, check=False)


def _birdc(node: Node, vrf: str, *command: str) -> str:
    run_dir = node.supervisor.files(vrf).run_dir
    argv = ["birdc", "-s", daemons.SOCKET, *command]
    return subprocess.run(argv, capture_output=True, text=True, cwd=run_dir).stdout


async def test_bgp_between_node_instances_stays_inside_each_vrf(nodes: dict[str, Node]) -> None:
    b = nodes["b"]
    for net in ("red", "blue"):
        await asyncio.to_thread(
            testing.wait_for,
            lambda n=net: ANNOUNCED[n] in _table(b, f"{n}-b", n),
            timeout=60,
            what=f"{ANNOUNCED[net]} learned over BGP in {net}-b's table",
        )
    for net, other in (("red", "blue"), ("blue", "red")):
        table = _table(b, f"{net}-b", net)
        assert f"{ANNOUNCED[net]} via 10.0.0.1 dev {net}0 proto bird" in table
        assert ANNOUNCED[other] not in table, f"{net}-b learned {other}'s prefix"
        assert "Established" in _birdc(b, f"{net}-b", "show", "protocols", "peer")
    # nothing of it in the nodes' own namespaces
    for node in nodes.values():
        assert "proto bird" not in _ip(
            "route", "show", "table", "all", ns=node.realizer.naming.node_netns
        )
    # what each daemon reports in its status entry: one session up, one route learned
    for net in ("red", "blue"):
        report = await b.supervisor.ensure(f"{net}-b", daemons.Wanted("bird", _config(net, "b")))
        assert report.status is not None
        assert report.status.get("sessions") == [
            {
                "name": "peer",
                "protocol": "BGP",
                "up": True,
                "state": "Established",
                "neighbor": "10.0.0.1",
                "adjacencies": None,
                "routes": 1,
            }
        ]
        assert (report.status.get("sessionsUp"), report.status.get("routesLearned")) == (1, 1)
