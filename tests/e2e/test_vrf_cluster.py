"""VRF-lite end to end: objects in a real API server, the real controller, two real
agent loops realizing them through netlink on two simulated nodes.

Topology (network namespaces this module creates and removes; nodes are plain netns,
which is all the VRF path needs):

    fabric ns: bridges "red" and "blue" (stand-ins for two VLANs on the LAN)
    node A / node B ns: segment bridges br-red, br-blue (the agents' ``--network``
        mapping red=br-red, blue=br-blue), each with an uplink veth to the fabric bridge
        of its network, and one host ("a VM NIC") on each segment:
    hosts: red A 10.0.0.11, red B 10.0.0.12, blue A 10.0.0.21, blue B 10.0.0.22, all
        /24 via 10.0.0.1, the same prefix and gateway in both VRFs; and on each node a
        host 10.0.3.11 behind "eth-blue2", a host interface blue takes in (10.0.3.1/24);
        a third network "gold" (bridge br-gold, no hosts) and a veth "eth-gold2" per
        node, for the routing test's one-node VRFs (each node also carries the label
        ``vrfe2e-node: a|b``, so a VRF can pick one node).

Isolation is checked on a routed path: red's hosts send 10.0.3.11 to red's gateway,
which would forward it if red's table held blue's routes; only the VRF separation stops
it (blue's hosts reach it, through blue's gateway).

The agents run in this process (``VRFAgent``, one per node, on a background event loop);
the controller runs as ``python -m kubevisor.controller.main``. ``ip``/``ping`` are the
test's independent observers.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kubevisor.agent.kernel import cgroups, probing, vrfrealizing
from kubevisor.agent.vrfs import handling as vrfhandling
from kubevisor.agent.vrfs import planning
from kubevisor.api import groups
from kubevisor.devenv import testing

pytestmark = pytest.mark.e2e

P = f"kve{os.getpid() % 100000}"
NS = "vrf-e2e"
LEASE_NS = "kubevisor-system"
G, V = groups.GROUP, groups.VERSION
SELECT = {"vrfe2e": "yes"}
NODES = ("a", "b")
RESYNC = 2.0
RED = {
    "interfaces": [{"name": "red0", "network": "red", "addresses": ["10.0.0.1/24"]}],
    "routes": [
        {"prefix": "192.168.50.0/24", "via": "10.0.0.11"},
        {"prefix": "203.0.113.0/24", "type": "blackhole"},
    ],
    "resources": {"cpu": "200m", "memory": "64Mi"},
}
BLUE = {
    "interfaces": [
        {"name": "blue0", "network": "blue", "addresses": ["10.0.0.1/24"]},
        {"name": "blue2", "hostInterface": "eth-blue2", "addresses": ["10.0.3.1/24"]},
    ],
    "routes": [{"prefix": "192.168.50.0/24", "via": "10.0.0.22"}],
}


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def _ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    return _run("ip", *(["-n", ns] if ns else []), *args, check=check).stdout


def _pings(ns: str, address: str) -> bool:
    return (
        _run("ip", "netns", "exec", ns, "ping", "-c1", "-W1", address, check=False).returncode == 0
    )


#: VRF waits are a minute unless a call says otherwise.
_wait = functools.partial(testing.wait_for, timeout=60)


def _netns() -> set[str]:
    return {line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()}


def _build(created: list[str]) -> dict[str, str]:
    """The fabric, two nodes and four hosts; returns role -> namespace."""
    names = {"fabric": f"{P}-fab"}
    _ip("netns", "add", names["fabric"])
    created.append(names["fabric"])
    for net in ("red", "blue", "gold"):
        _ip("link", "add", net, "type", "bridge", ns=names["fabric"])
        _ip("link", "set", net, "up", ns=names["fabric"])
    for i, node in enumerate(NODES, start=1):
        node_ns = names[node] = f"{P}-{node}"
        _ip("netns", "add", node_ns)
        created.append(node_ns)
        _ip("link", "set", "lo", "up", ns=node_ns)
        for net, host_ip in (("red", f"10.0.0.1{i}/24"), ("blue", f"10.0.0.2{i}/24")):
            _ip("link", "add", f"br-{net}", "type", "bridge", ns=node_ns)
            _ip("link", "set", f"br-{net}", "up", ns=node_ns)
            _ip("link", "add", f"up-{net}", "type", "veth", "peer", "name", f"{node}-{net}",
                "netns", names["fabric"], ns=node_ns)  # fmt: skip
            _ip("link", "set", f"up-{net}", "master", f"br-{net}", "up", ns=node_ns)
            _ip("link", "set", f"{node}-{net}", "master", net, "up", ns=names["fabric"])
            host = names[f"{net}-{node}"] = f"{P}-h{net}-{node}"
            _ip("netns", "add", host)
            created.append(host)
            _ip("link", "add", f"h-{net}", "type", "veth", "peer", "name", "eth0",
                "netns", host, ns=node_ns)  # fmt: skip
            _ip("link", "set", f"h-{net}", "master", f"br-{net}", "up", ns=node_ns)
            _ip("link", "set", "lo", "up", ns=host)
            _ip("link", "set", "eth0", "up", ns=host)
            _ip("addr", "add", host_ip, "dev", "eth0", ns=host)
            _ip("route", "add", "default", "via", "10.0.0.1", ns=host)
        _ip("link", "add", "br-gold", "type", "bridge", ns=node_ns)
        _ip("link", "set", "br-gold", "up", ns=node_ns)
        _ip("link", "add", "up-gold", "type", "veth", "peer", "name", f"{node}-gold",
            "netns", names["fabric"], ns=node_ns)  # fmt: skip
        _ip("link", "set", "up-gold", "master", "br-gold", "up", ns=node_ns)
        _ip("link", "set", f"{node}-gold", "master", "gold", "up", ns=names["fabric"])
        # a stub network: a veth whose other end stays up in the node (no dummy module
        # in every kernel here), so it has carrier once the VRF takes it in
        _ip("link", "add", "eth-gold2", "type", "veth", "peer", "name", "gold2-end", ns=node_ns)
        _ip("link", "set", "gold2-end", "up", ns=node_ns)
        host = names[f"blue2-{node}"] = f"{P}-hblue2-{node}"
        _ip("netns", "add", host)
        created.append(host)
        _ip("link", "add", "eth-blue2", "type", "veth", "peer", "name", "eth0",
            "netns", host, ns=node_ns)  # fmt: skip
        _ip("link", "set", "lo", "up", ns=host)
        _ip("link", "set", "eth0", "up", ns=host)
        _ip("addr", "add", "10.0.3.11/24", "dev", "eth0", ns=host)
        _ip("route", "add", "default", "via", "10.0.3.1", ns=host)
    return names


class Agents:
    """Both nodes' agent loops on one background event loop."""

    def __init__(self, kubeconfig: Path, names: dict[str, str]) -> None:
        self.kubeconfig = kubeconfig
        self.names = names
        self.loop = asyncio.new_event_loop()
        self.stop: asyncio.Event | None = None
        self.agents: dict[str, vrfhandling.VRFAgent] = {}
        self.realizers = {node: vrfrealizing.VRFRealizer(node_netns=names[node]) for node in NODES}
        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self._main(),), daemon=True
        )
        self.started = threading.Event()

    async def _main(self) -> None:
        from kubernetes_asyncio import client, config

        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        self.stop = asyncio.Event()
        async with client.ApiClient(cfg) as api:
            bridge_for = vrfhandling.bridge_mapper(
                {"red": "br-red", "blue": "br-blue", "gold": "br-gold"}
            )
            for node in NODES:
                self.agents[node] = vrfhandling.VRFAgent(
                    api,
                    node=self.names[node],
                    labels=_labels(node),
                    realizer=self.realizers[node],
                    bridge_for=bridge_for,
                    resync=RESYNC,
                )
            self.started.set()
            await asyncio.gather(*(a.run(self.stop) for a in self.agents.values()))

    def start(self) -> None:
        self.thread.start()
        assert self.started.wait(30), "agents did not start"

    def close(self) -> None:
        if self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=30)
        if not self.thread.is_alive():
            self.loop.close()


class Env:
    def __init__(self, cluster: Any, names: dict[str, str], agents: Agents) -> None:
        import kubernetes

        self.k = kubernetes
        self.custom = kubernetes.client.CustomObjectsApi(cluster.api)
        self.core = kubernetes.client.CoreV1Api(cluster.api)
        self.coord = kubernetes.client.CoordinationV1Api(cluster.api)
        self.names = names
        self.agents = agents

    def create(self, name: str, spec: dict[str, Any]) -> None:
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": "VRF",
            "metadata": {"name": name},
            "spec": {"nodeSelector": SELECT, **spec},
        }
        self.custom.create_namespaced_custom_object(G, V, NS, "vrfs", body)

    def delete(self, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(G, V, NS, "vrfs", name)
        except self.k.client.ApiException as exc:
            if exc.status != 404:
                raise

    def status(self, name: str) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object(G, V, NS, "vrfs", name)
        return dict(obj.get("status") or {})

    def ready(self, name: str) -> dict[str, Any]:
        conds = self.status(name).get("conditions") or []
        return next((dict(c) for c in conds if c["type"] == "Ready"), {})

    def vrf_ns(self, node: str, vrf: str) -> str:
        return self.agents.realizers[node].naming.vrf_netns(f"{NS}.{vrf}")


def _labels(node: str) -> dict[str, str]:
    """Node ``node``'s labels: SELECT, and its own name (for a VRF on one node)."""
    return {**SELECT, "vrfe2e-node": node}


def _lease(name: str, node: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {**_labels(node), "kubevisor.io/agent": "true"}},
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": 3600,
            "renewTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    }


@pytest.fixture(scope="module")
def env(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    testing.require_root("to build network namespaces")
    testing.require_tools("ip", "ping")
    created: list[str] = []
    proc: subprocess.Popen[bytes] | None = None
    agents: Agents | None = None
    logfile = tmp_path_factory.mktemp("vrfe2e") / "controller.log"
    log = open(logfile, "wb")
    import kubernetes

    core = kubernetes.client.CoreV1Api(cluster.api)
    coord = kubernetes.client.CoordinationV1Api(cluster.api)
    holder: list[Env] = []
    try:
        names = _build(created)
        for ns in (NS, LEASE_NS):
            try:
                core.create_namespace({"metadata": {"name": ns}})
            except kubernetes.client.ApiException as exc:
                if exc.status != 409:
                    raise
        for node in NODES:
            coord.create_namespaced_lease(LEASE_NS, _lease(names[node], node))
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubevisor.controller.main",
             "--kubeconfig", str(cluster.kubeconfig), "--namespace", NS],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        agents = Agents(cluster.kubeconfig, names)
        agents.start()
        env = Env(cluster, names, agents)
        holder.append(env)
        env.create("red", RED)
        env.create("blue", BLUE)
        for vrf in ("red", "blue"):
            _wait(
                lambda v=vrf: env.status(v).get("phase") == "Ready",
                what=f"{vrf} Ready",
                show=lambda v=vrf: env.status(v),
            )
        yield env
    finally:
        for vrf in ("red", "blue", "green", "tagged", "routed", "gold-a", "gold-b"):
            try:
                kubernetes.client.CustomObjectsApi(cluster.api).delete_namespaced_custom_object(
                    G, V, NS, "vrfs", vrf
                )
            except kubernetes.client.ApiException:
                pass
        if proc is not None:
            proc.terminate()
        if holder:
            agents = holder[0].agents  # a test may have restarted them
        if agents is not None:
            agents.close()  # first: no netlink from two threads at once
            for realizer in agents.realizers.values():
                # whatever a failed test left: remove every VRF the realizer finds
                for name in realizer.observe_sync():
                    realizer.remove_sync(name)
                realizer.close()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for node in NODES:
            try:
                coord.delete_namespaced_lease(f"{P}-{node}", LEASE_NS)
            except kubernetes.client.ApiException:
                pass
        for ns in reversed(created):
            _ip("netns", "del", ns, check=False)
        log.close()
        print(Path(logfile).read_text()[-3000:])


def _pings_within(ns: str, address: str, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _pings(ns, address):
            return True
    return False


def test_red_hosts_reach_red_and_never_blue(env: Env) -> None:
    n = env.names
    assert _pings_within(n["red-a"], "10.0.0.1"), "red host A cannot reach red's gateway"
    assert _pings_within(n["red-b"], "10.0.0.1"), "red host B cannot reach red's gateway"
    assert _pings_within(n["red-a"], "10.0.0.12"), "red A cannot reach red B across nodes"
    assert _pings_within(n["blue-a"], "10.0.0.22"), "blue A cannot reach blue B across nodes"
    assert _pings_within(n["blue-a"], "10.0.3.11"), "blue A is not routed to blue2"
    assert _pings_within(n["blue-b"], "10.0.3.11"), "blue B is not routed to blue2"
    # a routed target only blue's table knows: the VRF separation alone keeps red out
    assert not _pings(n["red-a"], "10.0.3.11"), "red A reaches blue2: the VRFs leak"
    assert not _pings(n["red-b"], "10.0.3.11"), "red B reaches blue2: the VRFs leak"


def test_status_per_node_and_routes_in_the_right_tables(env: Env) -> None:
    tables = {}
    for vrf, routes, ifaces in (("red", 2, ["red0"]), ("blue", 1, ["blue0", "blue2"])):
        st = env.status(vrf)
        assert st["readyNodes"] == "2/2" and st["phase"] == "Ready"
        tables[vrf] = st["tableAllocated"]
        for node in NODES:
            entry = st["nodes"][env.names[node]]
            assert entry["backend"] == "netns" and entry["ready"] is True
            assert entry["table"] == tables[vrf] and entry["routesInstalled"] == routes
            assert entry["interfaces"] == ifaces
    assert tables["red"] != tables["blue"]
    # red's resources reach the kernel: its cgroup holds the limits the spec asks for
    context = cgroups.CgroupContext(
        f"{NS}.red", parent=env.agents.realizers["a"].naming.cgroup_parent
    )
    if context.version != "none":
        assert context.limits() == planning.Limits(cpu_quota_us=20_000, memory_bytes=64 << 20)
        usage = env.status("red")["nodes"][env.names["a"]]["usage"]
        assert isinstance(usage["memoryBytes"], int) and usage["cpuSeconds"] >= 0
    for node in NODES:
        red_ns, blue_ns = env.vrf_ns(node, "red"), env.vrf_ns(node, "blue")
        red = _ip("route", "show", "table", str(tables["red"]), ns=red_ns)
        assert "192.168.50.0/24 via 10.0.0.11 dev red0" in red
        assert "blackhole 203.0.113.0/24" in red
        blue = _ip("route", "show", "table", str(tables["blue"]), ns=blue_ns)
        assert "192.168.50.0/24 via 10.0.0.22 dev blue0" in blue
        assert f"lookup {tables['red']}" in _ip("rule", "show", ns=red_ns)


def test_route_deleted_by_hand_comes_back(env: Env) -> None:
    table = str(env.status("red")["tableAllocated"])
    red_ns = env.vrf_ns("b", "red")
    # `ip route del` exits non-zero unless it removed the route (_ip checks), so the delete
    # itself proves the route was gone; looking again could race the agent's resync.
    _ip("route", "del", "192.168.50.0/24", "table", table, ns=red_ns)
    _wait(
        lambda: "192.168.50.0/24 via 10.0.0.11" in _ip("route", "show", "table", table, ns=red_ns),
        timeout=RESYNC * 5 + 10,
        what="route restored within the resync interval",
    )


def test_conflicting_vrf_is_refused_and_not_realized(env: Env) -> None:
    env.create("green", {"interfaces": [{"name": "g0", "network": "red"}]})
    ready = _wait(lambda: env.ready("green").get("reason") == "InterfaceConflict"
                  and env.ready("green"), what="green refused")  # fmt: skip
    assert f"VRF {NS}/red" in ready["message"]
    time_to_look = time.monotonic() + RESYNC * 2
    while time.monotonic() < time_to_look:  # several agent passes: never realized
        assert not any(env.vrf_ns(node, "green") in _netns() for node in NODES)
        time.sleep(0.2)
    env.delete("green")


def test_vlan_member_reports_missing_8021q(env: Env) -> None:
    if probing.cached_8021q():
        testing.absent(
            "this kernel has 802.1Q: the missing-802.1Q report cannot be observed here",
            setup_provides=False,
        )
    env.create(
        "tagged", {"interfaces": [{"name": "t0", "network": "red", "vlan": 7}]}
    )  # another segment than red's untagged one: no conflict

    def decided() -> dict[str, Any] | None:
        # Until the controller has decided the VRF's generation a node says WaitingForTable;
        # the node's own verdict comes after that.
        st = env.status("tagged")
        entries = (st.get("nodes") or {}).values()
        done = len(entries) == 2 and all(e.get("reason") != "WaitingForTable" for e in entries)
        return st if done else None

    st = _wait(decided, what="both nodes report their own verdict")
    for entry in st["nodes"].values():
        assert entry["ready"] is False
        assert entry["reason"] == "BackendUnavailable"
        assert "802.1Q not available in this kernel" in entry["message"]
    _wait(lambda: env.ready("tagged").get("reason") == "BackendUnavailable", what="condition")
    assert env.status("tagged")["readyNodes"] == "0/2"
    env.delete("tagged")


ROUTED_TABLE = 2500
BIRD_CONFIG = f"""
router id 10.99.0.1;
protocol device {{}}
protocol kernel {{ ipv4 {{ export all; }}; kernel table {ROUTED_TABLE}; }}
protocol static {{ ipv4; route 192.0.2.0/24 blackhole; }}
"""


def _daemon_entries(env: Env, name: str) -> dict[str, dict[str, Any]]:
    nodes = env.status(name).get("nodes") or {}
    return {node: dict(nodes.get(env.names[node]) or {}) for node in NODES}


def _bird_processes(config: str) -> list[int]:
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if config.encode() in path.read_bytes():
                found.append(int(path.parent.name))
        except OSError:
            pass
    return found


def test_bird_runs_in_each_node_context_reloads_refuses_and_comes_back(env: Env) -> None:
    """Issue 18's first slice through the whole loop: routing.daemon bird on both nodes,
    a refused config, a killed daemon, and a deletion that leaves nothing behind."""
    testing.require_tools("bird", "birdc")
    spec = {"table": ROUTED_TABLE, "routing": {"daemon": "bird", "config": BIRD_CONFIG}}
    env.create("routed", spec)

    def running() -> dict[str, dict[str, Any]] | None:
        entries = _daemon_entries(env, "routed")
        ok = all(
            e.get("ready") is True and (e.get("daemon") or {}).get("state") == "Running"
            for e in entries.values()
        )
        return entries if ok else None

    entries = _wait(running, what="bird Running on both nodes", show=lambda: env.status("routed"))
    _wait(lambda: env.status("routed").get("phase") == "Ready", what="routed Ready")
    pids = {}
    for node in NODES:
        daemon = entries[node]["daemon"]
        assert daemon["name"] == "bird" and daemon["version"].startswith("2.")
        pids[node] = daemon["pid"]
        vrf_ns = Path("/run/netns") / env.vrf_ns(node, "routed")
        assert os.stat(f"/proc/{pids[node]}/ns/net").st_ino == os.stat(vrf_ns).st_ino
        _wait(
            lambda n=node: (
                "192.0.2.0/24 proto bird"
                in _ip("route", "show", "table", str(ROUTED_TABLE), ns=env.vrf_ns(n, "routed"))
            ),
            timeout=20,
            what=f"BIRD's route in the VRF's table on node {node}",
        )
    assert pids["a"] != pids["b"]

    # a broken config is refused with BIRD's words; the daemons keep running
    env.custom.patch_namespaced_custom_object(
        G, V, NS, "vrfs", "routed",
        {"spec": {"routing": {"config": BIRD_CONFIG + "protocol nonsense {}\n"}}},
    )  # fmt: skip
    _wait(
        lambda: env.ready("routed").get("reason") == "InvalidDaemonConfig",
        what="Ready=False InvalidDaemonConfig",
        show=lambda: env.status("routed"),
    )
    message = env.ready("routed")["message"]
    assert "BIRD refused routing.config" in message
    for node in NODES:
        # the VRF's condition follows the first node that refused; each node reports its own
        entry = _wait(
            lambda n=node: (
                (e := _daemon_entries(env, "routed")[n]).get("reason") == "InvalidDaemonConfig"
                and e
            ),
            what=f"node {node} reports InvalidDaemonConfig",
            show=lambda: env.status("routed"),
        )
        assert entry["daemon"]["state"] == "Running" and entry["daemon"]["pid"] == pids[node]
        # and says so in a Warning Event of its own, reported from its node
        event = _wait(
            lambda n=node: next(
                (e for e in env.core.list_namespaced_event(
                    NS, field_selector="involvedObject.name=routed").items
                 if e.reason == "InvalidDaemonConfig"
                 and e.reporting_instance == env.agents.names[n]),
                None,
            ),
            what=f"node {node}'s InvalidDaemonConfig Warning Event",
        )  # fmt: skip
        assert event.type == "Warning" and event.reporting_component == "kubevisor-agent"
        assert event.involved_object.kind == "VRF" and "BIRD refused" in event.message

    # back to the good config; then a killed daemon comes back
    env.custom.patch_namespaced_custom_object(
        G, V, NS, "vrfs", "routed", {"spec": {"routing": {"config": BIRD_CONFIG}}}
    )
    _wait(running, what="routed ready again")
    os.kill(pids["a"], 9)
    entries = _wait(
        lambda: (e := running()) and e["a"]["daemon"]["pid"] != pids["a"] and e,
        timeout=30,
        what="a new bird on node a",
    )
    assert entries["b"]["daemon"]["pid"] == pids["b"]

    # deletion: no daemon, socket or config left
    run_dirs = [Path(env.agents.realizers[node].naming.run_dir(f"{NS}.routed")) for node in NODES]
    env.delete("routed")
    _wait(
        lambda: (
            not any(d.exists() for d in run_dirs)
            and not _bird_processes(str(run_dirs[0]))
            and not _bird_processes(str(run_dirs[1]))
        ),
        timeout=RESYNC * 5 + 10,
        what="no bird and no run directory left",
    )


#: The routing test's one-node VRFs on the gold segment: address, AS, what each announces,
#: and the network of its second interface (eth-gold2), which OSPF announces.
GOLD = {
    "a": {"address": "10.9.0.1", "as": 65001, "announce": "198.51.100.0/24", "stub": "10.9.1"},
    "b": {"address": "10.9.0.2", "as": 65002, "announce": "100.64.9.0/24", "stub": "10.9.2"},
}


def _gold(node: str, routing: dict[str, Any]) -> dict[str, Any]:
    me = GOLD[node]
    return {
        "nodeSelector": _labels(node),
        "interfaces": [
            {"name": "gold0", "network": "gold", "addresses": [f"{me['address']}/24"]},
            {"name": "gold2", "hostInterface": "eth-gold2", "addresses": [f"{me['stub']}.1/24"]},
        ],
        "routing": {"daemon": "frr", "routerId": me["address"], **routing},
    }


def _gold_bgp(node: str) -> dict[str, Any]:
    peer = GOLD["b" if node == "a" else "a"]
    return {
        "bgp": {
            "localAs": GOLD[node]["as"],
            "neighbors": [{"address": peer["address"], "remoteAs": peer["as"]}],
        },
        "announce": [GOLD[node]["announce"]],
    }


def _sessions_up(env: Env, protocol: str) -> dict[str, dict[str, Any]] | None:
    """Both gold VRFs' daemon entries once each has its one session of ``protocol`` up
    (and, for BGP, has learned the other's prefix)."""
    out = {}
    for node in NODES:
        entry = _daemon_entries(env, f"gold-{node}")[node].get("daemon") or {}
        listed = entry.get("sessions") or []
        if not (entry.get("sessionsUp") == 1 and listed and listed[0]["protocol"] == protocol):
            return None
        if protocol == "BGP" and not entry.get("routesLearned"):  # up, not yet updated
            return None
        out[node] = entry
    return out


def _everywhere_else(env: Env, vrf_ns: str) -> list[str]:
    """Every namespace of the test but ``vrf_ns``: nodes, other VRFs, hosts, the fabric,
    and the host's own (""), where a VRF's learned route must never appear."""
    mine = {ns for ns in _netns() if ns.startswith(P)}  # this module's, VRFs included
    return [ns for ns in ("", *env.names.values(), *mine) if ns != vrf_ns]


def _routes_in(ns: str) -> str:
    return _ip("route", "show", "table", "all", ns=ns or None, check=False)


def test_frr_typed_bgp_and_ospf_between_two_nodes_routes_stay_in_the_vrf(env: Env) -> None:
    """Issue 18 with FRR through the whole loop: the typed spec on two one-node VRFs over
    the gold segment; eBGP Established between the two nodes' daemons, each prefix learned
    on the other node in that VRF's namespace only (zebra's main table there, which the VRF's
    lookups reach after its own table), the RoutingSessions condition; then the same VRFs
    switched to typed OSPF (the group restarts with ospfd) and each learns the other's stub
    network; deletion leaves no FRR process or run directory."""
    testing.require_tools("vtysh")
    if not os.access("/usr/lib/frr/bgpd", os.X_OK):
        testing.absent("FRR is not installed (hack/setup installs frr and frr-pythontools)")
    for node in NODES:
        env.create(f"gold-{node}", _gold(node, _gold_bgp(node)))
    entries = _wait(
        lambda: _sessions_up(env, "BGP"),
        timeout=90,
        what="eBGP Established between the gold VRFs of node a and node b",
        show=lambda: {n: env.status(f"gold-{n}") for n in NODES},
    )
    for node in NODES:
        daemon = entries[node]
        assert daemon["name"] == "frr" and daemon["state"] == "Running"
        assert daemon["sessions"][0]["state"] == "Established"
        assert daemon["routesLearned"] >= 1

        def sessions_condition(vrf: str = f"gold-{node}") -> dict[str, Any]:
            conds = env.status(vrf).get("conditions") or []
            return next((c for c in conds if c["type"] == "RoutingSessions"), {})

        cond = _wait(
            lambda f=sessions_condition: f().get("status") == "True" and f(),
            timeout=30,
            what=f"RoutingSessions True on gold-{node}",
            show=sessions_condition,
        )
        assert cond["reason"] == "SessionsUp", cond
    for node, peer in (("a", "b"), ("b", "a")):
        vrf_ns = env.vrf_ns(node, f"gold-{node}")
        prefix = GOLD[peer]["announce"]
        _wait(
            lambda ns=vrf_ns, p=prefix: (
                f"{p} nhid" in _ip("route", "show", ns=ns)
                or f"{p} via" in _ip("route", "show", ns=ns)
            ),
            timeout=30,
            what=f"{prefix} from node {peer} in gold-{node}'s namespace",
            show=lambda ns=vrf_ns: _routes_in(ns),
        )
        line = next(x for x in _ip("route", "show", ns=vrf_ns).splitlines() if x.startswith(prefix))
        assert "proto bgp" in line and GOLD[peer]["address"] in line, line
        # the VRF's own lookups use it: a packet to the prefix goes to the peer
        host = prefix.rsplit(".", 1)[0] + ".7"
        got = _ip("route", "get", host, ns=vrf_ns)
        assert f"via {GOLD[peer]['address']} dev gold0" in got, got
        for other in _everywhere_else(env, vrf_ns):
            assert prefix not in _routes_in(other), (other, prefix)

    # the same VRFs switched to typed OSPF: the group restarts with ospfd
    pids = {node: entries[node]["pid"] for node in NODES}
    for node in NODES:
        env.custom.patch_namespaced_custom_object(
            G, V, NS, "vrfs", f"gold-{node}",
            {"spec": {"routing": {"bgp": None, "announce": None,
                                  "ospf": {"area": 0, "interfaces": ["gold0", "gold2"]}}}},
        )  # fmt: skip
    entries = _wait(
        lambda: _sessions_up(env, "OSPF"),
        timeout=120,  # a broadcast network waits out its DR election
        what="an OSPF Full adjacency between the gold VRFs",
        show=lambda: {n: _daemon_entries(env, f"gold-{n}")[n] for n in NODES},
    )
    for node, peer in (("a", "b"), ("b", "a")):
        assert entries[node]["pid"] != pids[node]
        vrf_ns = env.vrf_ns(node, f"gold-{node}")
        stub = f"{GOLD[peer]['stub']}.0/24"
        _wait(
            lambda ns=vrf_ns, p=stub: any(
                x.startswith(p) and "proto ospf" in x
                for x in _ip("route", "show", ns=ns).splitlines()
            ),
            timeout=60,
            what=f"{stub} over OSPF in gold-{node}'s namespace",
            show=lambda ns=vrf_ns: _routes_in(ns),
        )
        for other in _everywhere_else(env, vrf_ns):
            if other != env.vrf_ns(peer, f"gold-{peer}"):  # the peer's own network
                assert stub not in _routes_in(other), (other, stub)

    run_dirs = [
        Path(env.agents.realizers[node].naming.run_dir(f"{NS}.gold-{node}")) for node in NODES
    ]
    for node in NODES:
        env.delete(f"gold-{node}")
    _wait(
        lambda: not any(d.exists() or _bird_processes(str(d)) for d in run_dirs),
        timeout=RESYNC * 5 + 10,
        what="no FRR process and no run directory left",
    )


def test_a_restarted_agent_repairs_removes_and_keeps_tables(env: Env) -> None:
    """docs/vrf.md: a restarted agent finds what the kernel holds (marks live in the
    kernel, not in memory), repairs it, removes VRFs deleted while it was down and keeps
    the tables. Fresh agents with fresh realizers, over the kernel state the old ones left."""
    table = env.status("red")["tableAllocated"]
    env.agents.close()
    old = env.agents
    for realizer in old.realizers.values():
        realizer.close()
    # while the agents are down: blue is deleted, red's route is removed by hand
    env.delete("blue")
    for node in NODES:
        _ip("route", "del", "192.168.50.0/24", "table", str(table), ns=env.vrf_ns(node, "red"))
        assert env.vrf_ns(node, "blue") in _netns()
    env.agents = Agents(old.kubeconfig, env.names)
    env.agents.start()

    def converged() -> bool:
        for node in NODES:
            red = _ip("route", "show", "table", str(table), ns=env.vrf_ns(node, "red"))
            if "192.168.50.0/24 via 10.0.0.11" not in red or env.vrf_ns(node, "blue") in _netns():
                return False
        return True

    _wait(converged, timeout=RESYNC * 5 + 30, what="red repaired and blue removed on both nodes")
    assert env.status("red")["tableAllocated"] == table
    for node in NODES:
        assert f"lookup {table}" in _ip("rule", "show", ns=env.vrf_ns(node, "red"))
        assert "eth-blue2" in _ip("-o", "link", "show", ns=env.names[node]), "not handed back"
    assert _pings_within(env.names["red-a"], "10.0.0.12")


def test_deleting_the_objects_leaves_nothing_on_the_nodes(env: Env) -> None:
    env.delete("red")
    env.delete("blue")

    def clean() -> bool:
        for node in NODES:
            naming = env.agents.realizers[node].naming
            if any(ns.startswith(naming.netns_prefix) for ns in _netns()):
                return False
            if re.search(r": kv[0-9a-f]{11}@", _ip("-o", "link", "show", ns=env.names[node])):
                return False
            version = cgroups.detect_version()
            for ctl in ("cpu", "cpuacct", "memory") if version == "v1" else ("",):
                if (cgroups.CGROUP_ROOT / ctl / naming.cgroup_parent).exists():
                    return False
        return True

    _wait(clean, timeout=RESYNC * 5 + 10, what="nothing left on the nodes")
    assert not _pings(env.names["red-a"], "10.0.0.1")
