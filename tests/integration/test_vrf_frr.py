"""A VRF's routing daemon, for real: FRR (zebra, staticd, bgpd) in the VRF's namespace and
cgroup on a netns node, with the decisions BIRD gets (`daemons.decide`).

Topology (``frr_vrf``, `kubevisor.devenv.vrfdaemons`, shared with the BIRD tests): one node
namespace with a segment bridge ``br-red``; the VRF "red" is realized by `VRFRealizer` on
the netns backend (its own namespace), and `supervising.Supervisor` runs its FRR group as
the VRF loop does. The test observes with
``/proc``, ``ip`` and ``vtysh`` on its own. FRR's zebra installs into the namespace's main
table (8.4 has no table setting for its default VRF): the VRF's own namespace.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from kubevisor.agent.kernel import cgroups
from kubevisor.agent.vrfs import daemons, routingconfig, supervising
from kubevisor.api import vrfrouting
from kubevisor.devenv import testing, vrfdaemons

pytestmark = pytest.mark.integration

TABLE = vrfdaemons.TABLE
Ctx = vrfdaemons.DaemonVRF
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


@pytest.fixture
def ctx(frr_vrf: Ctx) -> Ctx:
    return frr_vrf


def _members(files: daemons.Files) -> dict[str, int]:
    """The group's daemons by name, from their pid files, alive and ours."""
    out = {}
    for pid_file in files.run_dir.glob("*.pid"):
        pid = int(pid_file.read_text().strip() or 0)
        cmdline = (
            Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if vrfdaemons.alive(pid) else []
        )
        if cmdline and pid_file.stem != "frr":
            out[Path(cmdline[0].decode()).name] = pid
    return out


def _routes(ctx: Ctx) -> str:
    return vrfdaemons.ip("route", "show", "table", "all", ns=ctx.vrf_ns)


async def _kernel_has(ctx: Ctx, prefix: str) -> None:
    await asyncio.to_thread(
        testing.wait_for,
        lambda: prefix in _routes(ctx),
        timeout=10,
        what=f"{prefix} from FRR's staticd in the VRF's namespace",
    )


async def test_frr_runs_each_daemon_in_the_vrf_context(ctx: Ctx) -> None:
    report = await ctx.running("frr", CONFIG)
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
    if context.version != "none":  # under the VRF's memory limit (256Mi)
        assert context.limits().memory_bytes == 256 * 2**20
    if frr is not None:  # the routing daemons drop root
        assert vrfdaemons.uids(members["bgpd"])[1] == str(frr.uid)
    # its BGP neighbour is a session in status (down: nobody answers at 10.0.0.2)
    assert report.status.get("sessionsTotal") == 1
    session = (report.status.get("sessions") or [])[0]
    assert (session["name"], session["protocol"], session["up"]) == ("10.0.0.2", "BGP", False)
    await _kernel_has(ctx, "192.0.2.0/24")
    assert "192.0.2.0/24" not in vrfdaemons.ip(
        "route", "show", "table", "all", ns=ctx.realizer.naming.node_netns
    )


async def test_a_broken_config_is_refused_by_vtysh_and_frr_keeps_running(
    ctx: Ctx,
) -> None:
    first = await ctx.running("frr", CONFIG)
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
    changed = await ctx.running("frr", CHANGED)
    assert changed.problem is None, changed
    assert changed.status is not None and changed.status["pid"] == pid
    assert changed.status["configHash"] == daemons.config_hash(CHANGED)
    await _kernel_has(ctx, "198.51.100.0/24")
    # a config that needs another daemon (ospfd) restarts the group with it
    ospf = await ctx.running("frr", WITH_OSPF)
    assert ospf.status is not None and ospf.status["pid"] != pid
    assert ospf.status["restarts"] == 0
    assert "ospfd" in _members(files)


async def test_a_killed_member_brings_the_group_back(ctx: Ctx) -> None:
    first = await ctx.running("frr", CONFIG)
    assert first.status is not None and first.status["pid"] is not None
    files = ctx.supervisor.files("red", "frr")
    old = _members(files)
    ctx.woken.clear()

    os.kill(old["bgpd"], signal.SIGKILL)
    await asyncio.wait_for(ctx.woken.wait(), timeout=10)  # the group exited, its pidfd woke us

    down = await ctx.supervisor.ensure("red", daemons.Wanted("frr", CONFIG))
    assert down.problem is not None and down.problem.reason == "DaemonFailed"
    back = await ctx.running("frr", CONFIG)
    assert back.status is not None and back.status["pid"] not in (None, first.status["pid"])
    assert back.status["restarts"] == 1
    assert not any(vrfdaemons.alive(pid) for pid in old.values())
    assert sorted(_members(files)) == sorted(MEMBERS)


async def test_a_restarted_agent_adopts_the_running_group(ctx: Ctx) -> None:
    first = await ctx.running("frr", CONFIG)
    assert first.status is not None
    ctx.supervisor.close()

    ctx.supervisor = ctx.new_supervisor()
    adopted = await ctx.supervisor.ensure("red", daemons.Wanted("frr", CONFIG))

    assert adopted.status is not None and adopted.status["state"] == "Running"
    assert adopted.status["pid"] == first.status["pid"]


async def test_switching_daemons_stops_the_other(ctx: Ctx) -> None:
    bird = "router id 10.0.0.1;\nprotocol device {}\n"
    first = await ctx.running("bird", bird)
    assert first.status is not None and first.status["pid"] is not None
    frr = await ctx.running("frr", CONFIG)
    assert frr.status is not None and frr.status["name"] == "frr"
    assert not vrfdaemons.alive(first.status["pid"])


async def test_deleting_the_vrf_leaves_no_frr_daemon_socket_or_config(
    ctx: Ctx,
) -> None:
    first = await ctx.running("frr", CONFIG)
    assert first.status is not None and first.status["pid"] is not None
    files = ctx.supervisor.files("red", "frr")
    members = _members(files)
    assert files.socket.exists() and files.config.exists()

    await ctx.supervisor.stop("red")
    await ctx.realizer.remove("red")

    assert not vrfdaemons.alive(first.status["pid"])
    assert not any(vrfdaemons.alive(pid) for pid in members.values())
    assert not files.run_dir.exists()
    assert not vrfdaemons.processes_with(str(files.run_dir))


@pytest.mark.parametrize("daemon", ["bird", "frr"])
@pytest.mark.parametrize("name", ["bgp", "bgp-filtered", "ospf", "everything"])
def test_the_typed_spec_passes_each_daemons_own_parser(
    tmp_path: Path, daemon: daemons.Daemon, name: str
) -> None:
    vrfdaemons.require(daemon)
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
