"""A VRF's routing daemon, for real: FRR (zebra, staticd, bgpd) in the VRF's namespace and
cgroup on a netns node, with the decisions BIRD gets (`daemons.decide`).

Topology: one node namespace (``<P>-n``) with a segment bridge ``br-red``; the VRF "red"
is realized by `VRFRealizer` on the netns backend (its own namespace), and
`supervising.Supervisor` runs its FRR group as the VRF loop does. The test observes with
``/proc``, ``ip`` and ``vtysh`` on its own. FRR's zebra installs into the namespace's main
table (8.4 has no table setting for its default VRF): the VRF's own namespace.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubevisor.agent.kernel import cgroups, vrfrealizing
from kubevisor.agent.vrfs import daemons, planning, routingconfig, supervising
from kubevisor.api import vrfrouting, vrfs
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

P = f"kvf{os.getpid() % 100000}"
TABLE = 1001
MEMBERS = ("zebra", "staticd", "bgpd")

CONFIG = """frr defaults traditional
ip route 192.0.2.0/24 blackhole
router bgp 65001
 bgp router-id 10.0.0.1
 no bgp ebgp-requires-policy
 neighbor 10.0.0.2 remote-as 65002
exit
"""
CHANGED = CONFIG.replace(
    "ip route 192.0.2.0/24 blackhole\n",
    "ip route 192.0.2.0/24 blackhole\nip route 198.51.100.0/24 blackhole\n",
)
WITH_OSPF = CONFIG + "router ospf\n network 10.0.0.0/24 area 0\nexit\n"
BROKEN = CONFIG + "router bgp 65001\n neighbour 10.0.0.3 remote-as 1\n"


def _ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check).stdout


@pytest.fixture(scope="module")
def node_ns() -> Iterator[str]:
    testing.require_root("to build network namespaces")
    testing.require_tools("ip", "vtysh", "bash")
    if "frr" not in supervising.installed():
        testing.absent("FRR is not installed (hack/setup installs frr and frr-pythontools)")
    ns = f"{P}-n"
    _ip("netns", "add", ns)
    try:
        _ip("link", "set", "lo", "up", ns=ns)
        _ip("link", "add", "br-red", "type", "bridge", ns=ns)
        _ip("link", "set", "br-red", "up", ns=ns)
        yield ns
    finally:
        _ip("netns", "del", ns, check=False)


def _desired(name: str = "red") -> planning.DesiredVRF:
    spec = vrfs.VRFSpec.model_validate(
        {
            "interfaces": [{"name": "red0", "network": "red", "addresses": ["10.0.0.1/24"]}],
            "resources": {"memory": "256Mi"},
            "backend": "netns",
        }
    )
    return planning.plan(
        name, spec, table=TABLE, bridge_for=lambda n, v: f"br-{n}", kernel_has_vrf=False
    )


@dataclass
class Context:
    realizer: vrfrealizing.VRFRealizer
    supervisor: supervising.Supervisor
    woken: asyncio.Event
    vrf_ns: str


def _supervisor(realizer: vrfrealizing.VRFRealizer, woken: asyncio.Event) -> supervising.Supervisor:
    return supervising.Supervisor(realizer, on_change=woken.set)


@pytest.fixture
async def ctx(node_ns: str) -> AsyncIterator[Context]:
    realizer = vrfrealizing.VRFRealizer(node_netns=node_ns)
    woken = asyncio.Event()
    supervisor = _supervisor(realizer, woken)
    try:
        status = await realizer.apply(_desired())
        assert status["ready"], status
        yield Context(realizer, supervisor, woken, realizer.naming.vrf_netns("red"))
    finally:
        await supervisor.stop("red")
        supervisor.close()
        await realizer.remove("red")
        realizer.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


async def _running(
    ctx: Context, config: str, *, daemon: daemons.Daemon = "frr", within: float = 20.0
) -> supervising.Report:
    """Passes (as the VRF loop runs them: on a wake-up, else every 0.5 s) until the daemon
    reports Running; the last report."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        ctx.woken.clear()
        report = await ctx.supervisor.ensure("red", daemons.Wanted(daemon, config))
        if report.status is not None and report.status["state"] == "Running":
            return report
        if loop.time() > deadline:
            raise AssertionError(f"daemon not running after {within} s: {report}")
        try:
            await asyncio.wait_for(ctx.woken.wait(), timeout=0.5)
        except TimeoutError:
            pass


def _members(files: daemons.Files) -> dict[str, int]:
    """The group's daemons by name, from their pid files, alive and ours."""
    out = {}
    for pid_file in files.run_dir.glob("*.pid"):
        pid = int(pid_file.read_text().strip() or 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if _alive(pid) else []
        if cmdline and pid_file.stem != "frr":
            out[Path(cmdline[0].decode()).name] = pid
    return out


def _uid(pid: int) -> str:
    """Effective uid of a process."""
    return Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[1]


def _routes(ctx: Context) -> str:
    return _ip("route", "show", "table", "all", ns=ctx.vrf_ns)


async def _kernel_has(ctx: Context, prefix: str) -> None:
    await asyncio.to_thread(
        testing.wait_for,
        lambda: prefix in _routes(ctx),
        timeout=10,
        what=f"{prefix} from FRR's staticd in the VRF's namespace",
    )


def _processes_with(text: str) -> list[Path]:
    def has(cmdline: Path) -> bool:
        try:
            return text.encode() in cmdline.read_bytes()
        except OSError:
            return False

    return [p for p in Path("/proc").glob("[0-9]*/cmdline") if has(p)]


async def test_frr_runs_each_daemon_in_the_vrf_context(ctx: Context) -> None:
    report = await _running(ctx, CONFIG)
    assert report.problem is None, report
    assert report.status is not None
    assert report.status["name"] == "frr"
    assert report.status["version"] and report.status["version"].startswith("8.")
    assert report.status["configHash"] == daemons.config_hash(CONFIG)
    files = ctx.supervisor.files("red", "frr")
    members = _members(files)
    assert sorted(members) == sorted(MEMBERS)
    context = cgroups.CgroupContext("red", parent=ctx.realizer.naming.cgroup_parent)
    frr = supervising.account("frr")
    for pid in [report.status["pid"], *members.values()]:
        assert pid is not None
        vrf_ns = Path("/run/netns") / ctx.vrf_ns
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(vrf_ns).st_ino
        if context.version != "none":
            assert pid in context.pids()
    if frr is not None:  # the routing daemons drop root
        assert _uid(members["bgpd"]) == str(frr.uid)
    # its BGP neighbour is a session in status (down: nobody answers at 10.0.0.2)
    assert report.status.get("sessionsTotal") == 1
    session = (report.status.get("sessions") or [])[0]
    assert (session["name"], session["protocol"], session["up"]) == ("10.0.0.2", "BGP", False)
    await _kernel_has(ctx, "192.0.2.0/24")
    assert "192.0.2.0/24" not in _ip(
        "route", "show", "table", "all", ns=ctx.realizer.naming.node_netns
    )


async def test_a_broken_config_is_refused_by_vtysh_and_frr_keeps_running(ctx: Context) -> None:
    first = await _running(ctx, CONFIG)
    assert first.status is not None
    pid = first.status["pid"]
    files = ctx.supervisor.files("red", "frr")

    refused = await ctx.supervisor.ensure("red", daemons.Wanted("frr", BROKEN))

    assert refused.problem is not None and refused.problem.reason == "InvalidDaemonConfig"
    assert refused.problem.message.startswith("FRR refused routing.config: line ")
    assert "Unknown command" in refused.problem.message and "neighbour" in refused.problem.message
    assert refused.status is not None
    assert refused.status["state"] == "Running" and refused.status["pid"] == pid
    assert files.config.read_text() == CONFIG
    # a valid change is reloaded (frr-reload) into the same group
    changed = await _running(ctx, CHANGED)
    assert changed.problem is None, changed
    assert changed.status is not None and changed.status["pid"] == pid
    assert changed.status["configHash"] == daemons.config_hash(CHANGED)
    await _kernel_has(ctx, "198.51.100.0/24")
    # a config that needs another daemon (ospfd) restarts the group with it
    ospf = await _running(ctx, WITH_OSPF)
    assert ospf.status is not None and ospf.status["pid"] != pid
    assert ospf.status["restarts"] == 0
    assert "ospfd" in _members(files)


async def test_a_killed_member_brings_the_group_back(ctx: Context) -> None:
    first = await _running(ctx, CONFIG)
    assert first.status is not None and first.status["pid"] is not None
    files = ctx.supervisor.files("red", "frr")
    old = _members(files)
    ctx.woken.clear()

    os.kill(old["bgpd"], signal.SIGKILL)
    await asyncio.wait_for(ctx.woken.wait(), timeout=10)  # the group exited, its pidfd woke us

    down = await ctx.supervisor.ensure("red", daemons.Wanted("frr", CONFIG))
    assert down.problem is not None and down.problem.reason == "DaemonFailed"
    back = await _running(ctx, CONFIG)
    assert back.status is not None and back.status["pid"] not in (None, first.status["pid"])
    assert back.status["restarts"] == 1
    assert not any(_alive(pid) for pid in old.values())
    assert sorted(_members(files)) == sorted(MEMBERS)


async def test_a_restarted_agent_adopts_the_running_group(ctx: Context) -> None:
    first = await _running(ctx, CONFIG)
    assert first.status is not None
    ctx.supervisor.close()

    ctx.supervisor = _supervisor(ctx.realizer, ctx.woken)
    adopted = await ctx.supervisor.ensure("red", daemons.Wanted("frr", CONFIG))

    assert adopted.status is not None and adopted.status["state"] == "Running"
    assert adopted.status["pid"] == first.status["pid"]


async def test_switching_daemons_stops_the_other(ctx: Context) -> None:
    bird = "router id 10.0.0.1;\nprotocol device {}\n"
    first = await _running(ctx, bird, daemon="bird")
    assert first.status is not None and first.status["pid"] is not None
    frr = await _running(ctx, CONFIG)
    assert frr.status is not None and frr.status["name"] == "frr"
    assert not _alive(first.status["pid"])


async def test_deleting_the_vrf_leaves_no_frr_daemon_socket_or_config(ctx: Context) -> None:
    first = await _running(ctx, CONFIG)
    assert first.status is not None and first.status["pid"] is not None
    files = ctx.supervisor.files("red", "frr")
    members = _members(files)
    assert files.socket.exists() and files.config.exists()

    await ctx.supervisor.stop("red")
    await ctx.realizer.remove("red")

    assert not _alive(first.status["pid"])
    assert not any(_alive(pid) for pid in members.values())
    assert not files.run_dir.exists()
    assert not _processes_with(str(files.run_dir))


@pytest.mark.parametrize("daemon", ["bird", "frr"])
@pytest.mark.parametrize("name", ["bgp", "bgp-filtered", "ospf", "everything"])
def test_the_typed_spec_passes_each_daemons_own_parser(
    node_ns: str, tmp_path: Path, daemon: daemons.Daemon, name: str
) -> None:
    testing.require_tools("bird")
    bgp = {"localAs": 65001, "neighbors": [{"address": "10.0.0.2", "remoteAs": 65002}]}
    both = {**bgp, "neighbors": [*bgp["neighbors"], {"address": "fd00::2", "remoteAs": 1}]}
    ospf = {"area": 1, "interfaces": ["red0"]}
    typed = {
        "bgp": {"bgp": bgp, "announce": ["198.51.100.0/24"]},
        "bgp-filtered": {"bgp": both, "importPrefixes": ["203.0.113.0/24"]},
        "ospf": {"ospf": ospf},
        "everything": {
            "routerId": "10.0.0.1",
            "bgp": both,
            "ospf": ospf,
            "announce": ["198.51.100.0/24", "2001:db8::/32"],
            "importPrefixes": ["203.0.113.0/24", "2001:db8:1::/48"],
        },
    }[name]
    routing = vrfrouting.VRFRouting.model_validate({"daemon": daemon, **typed})
    text = routingconfig.config(routing, TABLE)
    assert supervising.validate(daemons.files(tmp_path, daemon), text) is None, text
