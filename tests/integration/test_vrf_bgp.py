"""BGP between two nodes' VRF instances, each daemon in its VRF's context: red runs BIRD,
blue FRR, on the same nodes at once; two VRFs with the same addresses never learn each
other's prefixes.

Topology (network namespaces this module creates and removes):

    fabric ns: bridges "red" and "blue" (two LAN segments)
    node A / node B ns: br-red, br-blue, each with an uplink veth to its fabric bridge

VRFs (realized by `VRFRealizer` on the netns backend, daemons run by `Supervisor`):
red-a on node A and red-b on node B on segment red, 10.0.0.1/24 and 10.0.0.2/24;
blue-a and blue-b on segment blue with the very same addresses. red-a announces
198.51.100.0/24 to red-b over eBGP (BIRD), blue-a announces 203.0.113.0/24 to blue-b
(FRR; zebra installs into the namespace's main table, BIRD into red's table). (One VRF
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
from kubevisor.agent.vrfs import daemons, planning, routingconfig, supervising
from kubevisor.api import vrfrouting, vrfs
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

P = f"kvb{os.getpid() % 100000}"
NODES = ("a", "b")
TABLES = {"red": 1001, "blue": 1002}
DAEMONS: dict[str, daemons.Daemon] = {"red": "bird", "blue": "frr"}
#: The table each daemon installs learned routes into, in the VRF's namespace.
KERNEL_TABLES = {"red": str(TABLES["red"]), "blue": "main"}
PROTO = {"red": "proto bird", "blue": "proto bgp"}
#: BIRD's name of the session: the own config's protocol, the typed config's.
SESSION = {"own": "peer", "typed": "neighbor1"}
ANNOUNCED = {"red": "198.51.100.0/24", "blue": "203.0.113.0/24"}


def _ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check).stdout


@pytest.fixture(scope="module")
def topology() -> Iterator[dict[str, str]]:
    testing.require_root("to build network namespaces")
    testing.require_tools("ip", "bird", "birdc")
    if "frr" not in supervising.installed():
        testing.absent("FRR is not installed (hack/setup installs frr and frr-pythontools)")
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


def _typed(net: str, node: str) -> str:
    """The config the typed spec (routing.bgp, announce on node a) stands for."""
    me, peer = ("10.0.0.1", "10.0.0.2") if node == "a" else ("10.0.0.2", "10.0.0.1")
    my_as, peer_as = (65001, 65002) if node == "a" else (65002, 65001)
    routing = vrfrouting.VRFRouting.model_validate(
        {
            "daemon": DAEMONS[net],
            "routerId": me,
            "bgp": {"localAs": my_as, "neighbors": [{"address": peer, "remoteAs": peer_as}]},
            "announce": [ANNOUNCED[net]] if node == "a" else [],
        }
    )
    return routingconfig.config(routing, TABLES[net])


def _config(net: str, node: str, source: str = "own") -> str:
    if source == "typed":
        return _typed(net, node)
    me, peer = ("10.0.0.1", "10.0.0.2") if node == "a" else ("10.0.0.2", "10.0.0.1")
    my_as, peer_as = (65001, 65002) if node == "a" else (65002, 65001)
    if DAEMONS[net] == "frr":
        announce = f"ip route {ANNOUNCED[net]} blackhole\n" if node == "a" else ""
        network = f"  network {ANNOUNCED[net]}\n" if node == "a" else ""
        return (
            f"frr defaults traditional\n{announce}router bgp {my_as}\n bgp router-id {me}\n"
            f" no bgp ebgp-requires-policy\n neighbor {peer} remote-as {peer_as}\n"
            f" neighbor {peer} timers connect 1\n address-family ipv4 unicast\n{network}"
            " exit-address-family\nexit\n"
        )
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


@pytest.fixture(params=["own", "typed"])
def source(request: pytest.FixtureRequest) -> str:
    """Where the daemons' config comes from: routing.config ("own") or the typed spec."""
    return str(request.param)


@pytest.fixture
async def nodes(topology: dict[str, str], source: str) -> AsyncIterator[dict[str, Node]]:
    """Both nodes' red and blue, their daemons on the ``source`` config."""
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
                    f"{net}-{node}", daemons.Wanted(DAEMONS[net], _config(net, node, source))
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
    return _ip("route", "show", "table", KERNEL_TABLES[net], ns=ns, check=False)


async def test_bgp_between_node_instances_stays_inside_each_vrf(
    nodes: dict[str, Node], source: str
) -> None:
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
        assert f"{ANNOUNCED[net]}" in table and f"via 10.0.0.1 dev {net}0 {PROTO[net]}" in table
        everything = _ip(
            "route", "show", "table", "all", ns=b.realizer.naming.vrf_netns(f"{net}-b")
        )
        assert ANNOUNCED[other] not in everything, f"{net}-b learned {other}'s prefix"
    # nothing of it in the nodes' own namespaces
    for node in nodes.values():
        own = _ip("route", "show", "table", "all", ns=node.realizer.naming.node_netns)
        assert "proto bird" not in own and "proto bgp" not in own
    # what each daemon reports in its status entry: one session up, one route learned
    for net in ("red", "blue"):
        wanted = daemons.Wanted(DAEMONS[net], _config(net, "b", source))
        report = await b.supervisor.ensure(f"{net}-b", wanted)
        assert report.status is not None and report.status["name"] == DAEMONS[net]
        assert report.status.get("sessions") == [
            {
                "name": "10.0.0.1" if net == "blue" else SESSION[source],
                "protocol": "BGP",
                "up": True,
                "state": "Established",
                "neighbor": "10.0.0.1",
                "adjacencies": None,
                "routes": 1,
            }
        ]
        assert (report.status.get("sessionsUp"), report.status.get("routesLearned")) == (1, 1)
