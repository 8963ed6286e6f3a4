"""A VRF's routing daemon, for real: BIRD 2 in the VRF's namespace and cgroup on a netns node.

Topology (``bird_vrf``, `kubevisor.devenv.vrfdaemons`, shared with the FRR tests): one node
namespace with a segment bridge ``br-red``; the VRF "red" is realized by `VRFRealizer` on
the netns backend (its own namespace), and `supervising.Supervisor` runs its daemon as the
VRF loop does. The test observes with ``/proc``, ``ip`` and ``birdc`` on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from pathlib import Path

import pytest

from kubevisor.agent.kernel import cgroups
from kubevisor.agent.vrfs import daemons, planning, supervising
from kubevisor.devenv import testing, vrfdaemons

pytestmark = pytest.mark.integration

TABLE = vrfdaemons.TABLE
Ctx = vrfdaemons.DaemonVRF

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


@pytest.fixture
def ctx(bird_vrf: Ctx) -> Ctx:
    return bird_vrf


def _kernel_routes(ctx: Ctx) -> str:
    return vrfdaemons.ip("route", "show", "table", str(TABLE), ns=ctx.vrf_ns)


async def _kernel_has(ctx: Ctx, prefix: str) -> None:
    await asyncio.to_thread(
        testing.wait_for,
        lambda: prefix in _kernel_routes(ctx),
        timeout=10,
        what=f"{prefix} from BIRD in table {TABLE}",
    )


async def test_valid_config_runs_bird_in_the_vrf_context(ctx: Ctx) -> None:
    report = await ctx.running("bird", CONFIG)
    assert report.problem is None
    assert report.status is not None
    pid = report.status["pid"]
    assert pid is not None and vrfdaemons.alive(pid)
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
        assert vrfdaemons.uids(pid) == [str(user.uid)] * 2
    # its cgroup is the VRF's
    context = cgroups.CgroupContext("red", parent=ctx.realizer.naming.cgroup_parent)
    if context.version == "none":
        testing.absent("no cpu+memory cgroup controllers on this host", setup_provides=False)
    assert pid in context.pids()
    # under the VRF's memory limit (resources.memory 256Mi), which charges what it uses
    assert context.limits().memory_bytes == 256 * 2**20
    assert context.usage()["memoryBytes"] > 0
    # and it routes: its static route is in the VRF's table, in the VRF's namespace only
    await _kernel_has(ctx, "192.0.2.0/24")
    assert "proto bird" in _kernel_routes(ctx)
    node_ns = ctx.realizer.naming.node_netns
    assert "proto bird" not in vrfdaemons.ip("route", "show", "table", "all", ns=node_ns)
    assert "proto bird" not in vrfdaemons.ip("route", "show", "table", "all")


async def test_a_broken_config_is_refused_and_the_daemon_keeps_running(
    ctx: Ctx,
) -> None:
    first = await ctx.running("bird", CONFIG)
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
    assert pid is not None and vrfdaemons.alive(pid)
    # a valid change then reloads the same process
    changed = await ctx.running("bird", CHANGED)
    assert changed.problem is None
    assert changed.status is not None and changed.status["pid"] == pid
    assert changed.status["configHash"] == daemons.config_hash(CHANGED)
    await _kernel_has(ctx, "198.51.100.0/24")


async def test_a_config_cannot_read_the_nodes_root_files(ctx: Ctx) -> None:
    if supervising.account() is None:
        testing.absent("no bird account (Debian's bird2 creates it)")
    refused = await ctx.supervisor.ensure(
        "red", daemons.Wanted("bird", 'include "/etc/shadow";\n' + CONFIG)
    )
    assert refused.problem is not None and refused.problem.reason == "InvalidDaemonConfig"
    assert "Permission denied" in refused.problem.message


async def test_a_killed_daemon_comes_back(ctx: Ctx) -> None:
    first = await ctx.running("bird", CONFIG)
    assert first.status is not None and first.status["pid"] is not None
    pid = first.status["pid"]
    ctx.woken.clear()

    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(ctx.woken.wait(), timeout=10)  # the pidfd saw it die

    down = await ctx.supervisor.ensure("red", daemons.Wanted("bird", CONFIG))
    assert down.problem is not None and down.problem.reason == "DaemonFailed"
    assert down.status is not None and down.status["state"] == "Restarting"
    back = await ctx.running("bird", CONFIG)
    assert back.status is not None
    assert back.status["pid"] not in (None, pid)
    assert back.status["restarts"] == 1
    await _kernel_has(ctx, "192.0.2.0/24")


async def test_a_restarted_agent_adopts_the_running_daemon(ctx: Ctx) -> None:
    first = await ctx.running("bird", CONFIG)
    assert first.status is not None
    ctx.supervisor.close()  # the agent goes away; its daemon stays

    ctx.supervisor = ctx.new_supervisor()
    adopted = await ctx.supervisor.ensure("red", daemons.Wanted("bird", CONFIG))

    assert adopted.status is not None
    assert adopted.status["state"] == "Running"
    assert adopted.status["pid"] == first.status["pid"]


async def test_deleting_the_vrf_leaves_no_daemon_socket_or_config(
    ctx: Ctx,
) -> None:
    first = await ctx.running("bird", CONFIG)
    assert first.status is not None and first.status["pid"] is not None
    pid = first.status["pid"]
    files = ctx.supervisor.files("red")
    assert files.socket.exists() and files.config.exists() and files.pid_file.exists()

    await ctx.supervisor.stop("red")
    await ctx.realizer.remove("red")

    assert not vrfdaemons.alive(pid)
    assert not files.run_dir.exists()
    assert ctx.vrf_ns not in vrfdaemons.ip("netns", "list")
    assert not vrfdaemons.processes_with(str(files.config))


async def test_sweep_stops_a_daemon_whose_vrf_is_gone(ctx: Ctx) -> None:
    first = await ctx.running("bird", CONFIG)
    assert first.status is not None and first.status["pid"] is not None
    fresh = ctx.new_supervisor()  # an agent that never knew "red"
    try:
        await fresh.sweep(keep=set())
    finally:
        fresh.close()
    assert not vrfdaemons.alive(first.status["pid"])
    assert not ctx.supervisor.files("red").run_dir.exists()


#: Enough static routes that BIRD needs far more than `SMALL` to hold them.
MANY_ROUTES = 400_000
SMALL = 32 << 20


def _many_routes_config() -> str:
    routes = "".join(
        f"route 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32 blackhole;\n"
        for i in range(MANY_ROUTES)
    )
    return CONFIG + f"protocol static many {{ ipv4; {routes} }}\n"


async def test_a_daemon_over_its_memory_limit_is_killed_by_the_vrfs_cgroup(ctx: Ctx) -> None:
    """Issue 18: a daemon over its VRF's memory limit is the VRF's problem, not the node's.

    red's limit is cut to 32Mi and its BIRD given 400,000 static routes: the kernel kills
    it inside red's cgroup (its OOM counter says so), red reports DaemonOutOfMemory with a
    sentence, and it is restarted with backoff (and killed again); blue, another VRF with
    its own BIRD on the same node, keeps running with the same pid and no OOM kill.
    """
    context = cgroups.CgroupContext("red", parent=ctx.realizer.naming.cgroup_parent)
    if context.version == "none":
        testing.absent("no cpu+memory cgroup controllers on this host", setup_provides=False)
    blue = await ctx.realizer.apply(vrfdaemons.desired("blue"))
    assert blue["ready"], blue
    try:
        blue_before = await _blue_running(ctx)
        small = dataclasses.replace(
            vrfdaemons.desired(), limits=planning.Limits(memory_bytes=SMALL)
        )
        assert (await ctx.realizer.apply(small))["ready"]
        assert context.limits().memory_bytes == SMALL
        assert context.oom_kills() == 0
        wanted = daemons.Wanted("bird", await asyncio.to_thread(_many_routes_config))
        seen: list[supervising.Report] = []

        async def restarts_after_oom(count: int) -> supervising.Report:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 120
            while loop.time() < deadline:
                ctx.woken.clear()
                report = await ctx.supervisor.ensure("red", wanted)
                seen.append(report)
                status = report.status or {}
                if (status.get("restarts") or 0) >= count and report.problem is not None:
                    return report
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ctx.woken.wait(), timeout=0.5)
            raise AssertionError(f"no {count} OOM restarts: {seen[-1:]}")

        first = await restarts_after_oom(1)
        assert first.problem is not None and first.problem.reason == "DaemonOutOfMemory", first
        assert "over the VRF's memory limit (resources.memory)" in first.problem.message
        assert first.status is not None and first.status["state"] == "Restarting"
        assert context.oom_kills() >= 1
        # restarted with backoff: it comes back (and is killed again) as the restart count grows
        second = await restarts_after_oom(2)
        assert second.problem is not None and second.problem.reason == "DaemonOutOfMemory"
        assert "restart 3 in" in second.problem.message
        # the other VRF on the node: same daemon, never OOM-killed
        blue_after = await ctx.supervisor.ensure("blue", daemons.Wanted("bird", CONFIG))
        assert blue_after.problem is None and blue_after.status is not None
        assert blue_after.status["pid"] == blue_before and vrfdaemons.alive(blue_before)
        blue_context = cgroups.CgroupContext("blue", parent=ctx.realizer.naming.cgroup_parent)
        assert blue_context.oom_kills() == 0
    finally:
        await ctx.supervisor.stop("blue")
        await ctx.realizer.remove("blue")


async def _blue_running(ctx: Ctx) -> int:
    report = await ctx.supervisor.ensure("blue", daemons.Wanted("bird", CONFIG))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while report.status is None or report.status["state"] != "Running":
        assert loop.time() < deadline, report
        await asyncio.sleep(0.2)  # polling a condition with a deadline
        report = await ctx.supervisor.ensure("blue", daemons.Wanted("bird", CONFIG))
    pid = report.status["pid"]
    assert pid is not None
    return pid
