"""Runs inside the tiny guest: BIRD bound to l3mdev VRF devices, through the product's
supervisor, against Debian's kernel (the host has no l3mdev VRF).

red and peer share one segment (br-red) and run BGP between their BIRDs; blue has red's
address and neighbour on its own segment (br-blue), where nobody answers. What peer
announces must land in red's table only; each BIRD sits in its VRF's cgroup under its
memory limit.
"""

import asyncio
import json
import os
import time
import traceback

from pyroute2 import IPRoute

from kubevisor.agent.kernel import cgroups, routes, vrfrealizing
from kubevisor.agent.vrfs import daemons, planning, supervising
from kubevisor.api import vrfs as api_vrfs

PREFIX = "198.18.0.0/24"
MEMORY = 64 * 2**20


def check(cond, what):
    print(("PASS " if cond else "FAIL ") + what, flush=True)
    if not cond:
        raise SystemExit(1)


def vrf(iface, network, address, local_as, remote_as, peer, announce=()):
    return {
        "interfaces": [{"name": iface, "network": network, "addresses": [f"{address}/24"]}],
        "resources": {"memory": "64Mi"},
        "routing": {
            "daemon": "bird",
            "routerId": address,
            "bgp": {"localAs": local_as, "neighbors": [{"address": peer, "remoteAs": remote_as}]},
            "announce": list(announce),
        },
    }


async def main():
    def setup():
        with IPRoute() as ipr:
            for name in ("br-red", "br-blue"):
                ipr.link("add", ifname=name, kind="bridge")
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")

    await asyncio.to_thread(setup)
    specs = {
        "red": vrf("red0", "red", "10.0.0.1", 65001, 65002, "10.0.0.2"),
        "peer": vrf("peer0", "red", "10.0.0.2", 65002, 65001, "10.0.0.1", [PREFIX]),
        "blue": vrf("blue0", "blue", "10.0.0.1", 65001, 65002, "10.0.0.2"),
    }
    assigned = {
        name: planning.Assigned(api_vrfs.VRFSpec.model_validate(spec), 1000 + n)
        for n, (name, spec) in enumerate(specs.items())
    }
    plan = planning.plan_node(assigned, bridge_for=lambda n, v: f"br-{n}", kernel_has_vrf=True)
    realizer = vrfrealizing.VRFRealizer()
    supervisor = supervising.Supervisor(realizer, on_change=lambda: None)
    check(supervising.installed() >= {"bird"}, f"bird installed {supervising.installed()}")
    wanted = {}
    for name, desired in plan.desired.items():
        check(desired.backend == "vrf", f"{name} planned on backend vrf")
        problem = planning.daemon_problem(
            assigned[name].spec, installed=frozenset({"bird"}), backend="vrf"
        )
        check(problem is None, f"{name}: bird runs on l3mdev ({problem})")
        status = await realizer.apply(desired)
        check(status["ready"], f"{name} realized {json.dumps(status)}")
        device = realizer.naming.vrf_device(name)
        wanted[name] = daemons.wanted(assigned[name].spec, desired.table, device)
        check(f'vrf "{device}"' in wanted[name].config, f"{name}: config bound to {device}")
        report = await supervisor.ensure(name, wanted[name])
        check(report.problem is None, f"{name}: bird started ({report.problem})")
    red, blue = plan.desired["red"], plan.desired["blue"]

    def learned(table):
        with routes.RouteSocket() as sock:
            return {r.dst for r in sock.dump(table=table)}

    deadline = time.monotonic() + 180
    reports = {}
    while time.monotonic() < deadline:
        reports = {name: await supervisor.ensure(name, wanted[name]) for name in wanted}
        # both: the report is read before the table, and the route can land in between
        up = (reports["red"].status or {}).get("sessionsUp") == 1
        if up and PREFIX in await asyncio.to_thread(learned, red.table):
            break
        await asyncio.sleep(1)  # polling a condition with a deadline
    for name, report in reports.items():
        print(f"{name}: {json.dumps(report.status)}", flush=True)
    check(PREFIX in learned(red.table), f"{PREFIX} learned into red's table {red.table}")
    check((reports["red"].status or {}).get("sessionsUp") == 1, "red's BGP session up")
    check((reports["blue"].status or {}).get("sessionsUp") == 0, "blue's session not up")
    check(PREFIX not in learned(blue.table), f"{PREFIX} not in blue's table {blue.table}")
    check(PREFIX not in learned(254), f"{PREFIX} not in the main table")
    for name in wanted:
        pid = (reports[name].status or {}).get("pid")
        check(pid is not None, f"{name}: bird pid {pid}")
        context = cgroups.CgroupContext(name, parent=realizer.naming.cgroup_parent)
        check(pid in context.pids(), f"{name}: bird {pid} in the VRF's cgroup")
        limit = context.limits().memory_bytes
        check(limit == MEMORY, f"{name}: memory limit {limit} on the cgroup")
    for name in wanted:
        await supervisor.stop(name)
        await realizer.remove(name)
        left = await asyncio.to_thread(os.path.exists, realizer.naming.run_dir(name))
        check(not left, f"{name}: run dir removed")
    check(await realizer.observe() == {}, "observe() empty after remove")
    supervisor.close()
    realizer.close()


try:
    asyncio.run(main())
    print("KV-GUEST-OK", flush=True)
except SystemExit:
    print("KV-GUEST-FAIL", flush=True)
except Exception:
    traceback.print_exc()
    print("KV-GUEST-FAIL", flush=True)
