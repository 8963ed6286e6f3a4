"""A VRF's routing daemon, for real: BIRD 2 in the VRF's namespace and cgroup on a netns node.

Topology: one node namespace (``<P>-n``) with a segment bridge ``br-red``; the VRF "red"
is realized by `VRFRealizer` on the netns backend (its own namespace), and
`supervising.Supervisor` runs its daemon as the VRF loop does. The test observes with
``/proc``, ``ip`` and ``birdc`` on its own.
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
from kubevisor.agent.vrfs import daemons, planning, supervising
from kubevisor.api import vrfs
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

P = f"kvd{os.getpid() % 100000}"
TABLE = 1001

CONFIG = f"""
router id 10.0.0.1;
protocol device {{}}
protocol kernel {{ ipv4 {{ export all; }}; kernel table {TABLE}; }}
protocol static {{ ipv4; route 192.0.2.0/24 blackhole; }}
"""
CHANGED = CONFIG.replace(
    "route 192.0.2.0/24 blackhole;",
    "route 192.0.2.0/24 blackhole; route 198.51.100.0/24 blackhole;",
)
BROKEN = CONFIG + "protocol nonsense {}\n"


def _ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check).stdout


@pytest.fixture(scope="module")
def node_ns() -> Iterator[str]:
    testing.require_root("to build network namespaces")
    testing.require_tools("ip", "bird", "birdc")
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
    # the default run root (/run/kubevisor): the daemon's account must reach its files
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


async def _running(ctx: Context, config: str, *, within: float = 15.0) -> supervising.Report:
    """Passes (as the VRF loop runs them: on a wake-up, else every 0.5 s) until the daemon
    reports Running; the last report."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        ctx.woken.clear()
        report = await ctx.supervisor.ensure("red", daemons.Wanted("bird", config))
        if report.status is not None and report.status["state"] == "Running":
            return report
        if loop.time() > deadline:
            raise AssertionError(f"daemon not running after {within} s: {report}")
        try:
            await asyncio.wait_for(ctx.woken.wait(), timeout=0.5)
        except TimeoutError:
            pass


def _uids(pid: int) -> list[str]:
    """Real and effective uid of a process."""
    return Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:2]


def _has(cmdline: Path, text: str) -> bool:
    try:
        return text.encode() in cmdline.read_bytes()
    except OSError:
        return False


def _processes_with(text: str) -> list[Path]:
    """Processes whose command line holds ``text``."""
    return [p for p in Path("/proc").glob("[0-9]*/cmdline") if _has(p, text)]


def _kernel_routes(ctx: Context) -> str:
    return _ip("route", "show", "table", str(TABLE), ns=ctx.vrf_ns)


async def _kernel_has(ctx: Context, prefix: str) -> None:
    await asyncio.to_thread(
        testing.wait_for,
        lambda: prefix in _kernel_routes(ctx),
        timeout=10,
        what=f"{prefix} from BIRD in table {TABLE}",
    )


async def test_valid_config_runs_bird_in_the_vrf_context(ctx: Context) -> None:
    report = await _running(ctx, CONFIG)
    assert report.problem is None
    assert report.status is not None
    pid = report.status["pid"]
    assert pid is not None and _alive(pid)
    assert report.status["name"] == "bird"
    assert report.status["version"] and report.status["version"].startswith("2.")
    assert report.status["configHash"] == daemons.config_hash(CONFIG)
    # its network namespace is the VRF's
    vrf_ns = Path("/run/netns") / ctx.vrf_ns
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(vrf_ns).st_ino
    assert os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    # it runs as BIRD's own account (network capabilities only), not as root
    user = supervising.account()
    if user is not None:
        assert _uids(pid) == [str(user.uid)] * 2
    # its cgroup is the VRF's
    context = cgroups.CgroupContext("red", parent=ctx.realizer.naming.cgroup_parent)
    if context.version == "none":
        testing.absent("no cpu+memory cgroup controllers on this host", setup_provides=False)
    assert pid in context.pids()
    # and it routes: its static route is in the VRF's table, in the VRF's namespace only
    await _kernel_has(ctx, "192.0.2.0/24")
    assert "proto bird" in _kernel_routes(ctx)
    node_ns = ctx.realizer.naming.node_netns
    assert "proto bird" not in _ip("route", "show", "table", "all", ns=node_ns)
    assert "proto bird" not in _ip("route", "show", "table", "all")


async def test_a_broken_config_is_refused_and_the_daemon_keeps_running(ctx: Context) -> None:
    first = await _running(ctx, CONFIG)
    assert first.status is not None
    pid = first.status["pid"]
    files = ctx.supervisor.files("red")

    refused = await ctx.supervisor.ensure("red", daemons.Wanted("bird", BROKEN))

    assert refused.problem is not None
    assert refused.problem.reason == "InvalidDaemonConfig"
    assert "routing.config" in refused.problem.message
    assert "syntax error" in refused.problem.message or "nonsense" in refused.problem.message
    assert str(files.run_dir) not in refused.problem.message
    assert refused.status is not None
    assert refused.status["state"] == "Running" and refused.status["pid"] == pid
    assert refused.status["configHash"] == daemons.config_hash(CONFIG)
    assert files.config.read_text() == CONFIG
    assert pid is not None and _alive(pid)
    # a valid change then reloads the same process
    changed = await _running(ctx, CHANGED)
    assert changed.problem is None
    assert changed.status is not None and changed.status["pid"] == pid
    assert changed.status["configHash"] == daemons.config_hash(CHANGED)
    await _kernel_has(ctx, "198.51.100.0/24")


async def test_a_config_cannot_read_the_nodes_root_files(ctx: Context) -> None:
    if supervising.account() is None:
        testing.absent("no bird account (Debian's bird2 creates it)")
    refused = await ctx.supervisor.ensure(
        "red", daemons.Wanted("bird", 'include "/etc/shadow";\n' + CONFIG)
    )
    assert refused.problem is not None and refused.problem.reason == "InvalidDaemonConfig"
    assert "Permission denied" in refused.problem.message


async def test_a_killed_daemon_comes_back(ctx: Context) -> None:
    first = await _running(ctx, CONFIG)
    assert first.status is not None and first.status["pid"] is not None
    pid = first.status["pid"]
    ctx.woken.clear()

    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(ctx.woken.wait(), timeout=10)  # the pidfd saw it die

    down = await ctx.supervisor.ensure("red", daemons.Wanted("bird", CONFIG))
    assert down.problem is not None and down.problem.reason == "DaemonFailed"
    assert down.status is not None and down.status["state"] == "Restarting"
    back = await _running(ctx, CONFIG)
    assert back.status is not None
    assert back.status["pid"] not in (None, pid)
    assert back.status["restarts"] == 1
    await _kernel_has(ctx, "192.0.2.0/24")


async def test_a_restarted_agent_adopts_the_running_daemon(ctx: Context) -> None:
    first = await _running(ctx, CONFIG)
    assert first.status is not None
    ctx.supervisor.close()  # the agent goes away; its daemon stays

    ctx.supervisor = _supervisor(ctx.realizer, ctx.woken)
    adopted = await ctx.supervisor.ensure("red", daemons.Wanted("bird", CONFIG))

    assert adopted.status is not None
    assert adopted.status["state"] == "Running"
    assert adopted.status["pid"] == first.status["pid"]


async def test_deleting_the_vrf_leaves_no_daemon_socket_or_config(ctx: Context) -> None:
    first = await _running(ctx, CONFIG)
    assert first.status is not None and first.status["pid"] is not None
    pid = first.status["pid"]
    files = ctx.supervisor.files("red")
    assert files.socket.exists() and files.config.exists() and files.pid_file.exists()

    await ctx.supervisor.stop("red")
    await ctx.realizer.remove("red")

    assert not _alive(pid)
    assert not files.run_dir.exists()
    assert ctx.vrf_ns not in _ip("netns", "list")
    assert not _processes_with(str(files.config))


async def test_sweep_stops_a_daemon_whose_vrf_is_gone(ctx: Context) -> None:
    first = await _running(ctx, CONFIG)
    assert first.status is not None and first.status["pid"] is not None
    fresh = _supervisor(ctx.realizer, ctx.woken)  # an agent that never knew "red"
    try:
        await fresh.sweep(keep=set())
    finally:
        fresh.close()
    assert not _alive(first.status["pid"])
    assert not ctx.supervisor.files("red").run_dir.exists()
