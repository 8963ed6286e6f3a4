"""Runs inside the tiny guest: the product's l3mdev (vrf) backend against a real kernel."""

import asyncio
import json
import socket
import traceback

from pyroute2 import IPRoute

from kubevisor.agent.kernel import probing, routes, vrfrealizing
from kubevisor.agent.vrfs import planning
from kubevisor.api import vrfs as api_vrfs


def check(cond, what):
    print(("PASS " if cond else "FAIL ") + what, flush=True)
    if not cond:
        raise SystemExit(1)


async def main():
    backend = await asyncio.to_thread(probing.detect_backend)
    check(backend == "vrf", f"detect_backend() == 'vrf' (got {backend})")

    def setup():
        with IPRoute() as ipr:
            ipr.link("add", ifname="br-red", kind="bridge")
            ipr.link("add", ifname="br-blue", kind="bridge")
            ipr.link("add", ifname="eth-host", kind="dummy")
            for name in ("br-red", "br-blue", "eth-host"):
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")

    await asyncio.to_thread(setup)
    vrfs = {
        "red": {
            "interfaces": [
                {"name": "red0", "network": "red", "addresses": ["10.0.0.1/24"]},
                {"name": "redh", "hostInterface": "eth-host", "addresses": ["10.0.2.1/24"]},
            ],
            "routes": [
                {"prefix": "192.168.50.0/24", "via": "10.0.0.11"},
                {"prefix": "203.0.113.0/24", "type": "blackhole"},
                {"prefix": "198.51.100.0/24", "device": "redh", "metric": 5},
            ],
        },
        "blue": {
            "interfaces": [{"name": "blue0", "network": "blue", "addresses": ["10.0.0.1/24"]}],
            "routes": [{"prefix": "192.168.50.0/24", "via": "10.0.0.22"}],
        },
    }
    # tables as the controller would allocate them; specs parsed with the API model
    assigned = {
        name: planning.Assigned(api_vrfs.VRFSpec.model_validate(spec), 1000 + n)
        for n, (name, spec) in enumerate(vrfs.items())
    }
    plan = planning.plan_node(assigned, bridge_for=lambda n, v: f"br-{n}", kernel_has_vrf=True)
    check(not plan.refused, f"no refusals {plan.refused}")
    realizer = vrfrealizing.VRFRealizer()
    for desired in plan.desired.values():
        check(desired.backend == "vrf", f"{desired.name} planned on backend vrf")
        status = await realizer.apply(desired)
        print(json.dumps(status), flush=True)
        check(status["ready"] and status["backend"] == "vrf", f"{desired.name} ready")
    red, blue = plan.desired["red"], plan.desired["blue"]
    with routes.RouteSocket() as sock:
        got = {(r.table, r.dst, r.gateway) for r in sock.dump(protocol=routes.PROTO_KUBEVISOR)}
        check((red.table, "192.168.50.0/24", "10.0.0.11") in got, "red route in red table")
        check((blue.table, "192.168.50.0/24", "10.0.0.22") in got, "blue route in blue table")
        connected = {(r.table, r.dst) for r in sock.dump(table=red.table)}
        check(
            (red.table, "10.0.0.0/24") in connected, "connected 10.0.0.0/24 in red's l3mdev table"
        )
        check(
            (blue.table, "10.0.2.0/24")
            not in {(r.table, r.dst) for r in sock.dump(table=blue.table)},
            "red's 10.0.2.0/24 absent from blue table",
        )
        main_routes = {r.dst for r in sock.dump(table=254)}
        check("10.0.0.0/24" not in main_routes, "VRF prefixes not in the main table")
        # drift: delete a route by hand, resync restores it
        victim = next(
            r
            for r in sock.dump(table=red.table, protocol=routes.PROTO_KUBEVISOR)
            if r.dst == "192.168.50.0/24"
        )
        sock.apply(delete=[victim])
    observed = await realizer.observe()
    check(observed["red"]["routesInstalled"] == 2, "drift visible in observe()")
    check(
        observed["red"]["interfaces"] == ["eth-host", "red0"],
        f"members {observed['red']['interfaces']}",
    )
    status = await realizer.apply(red)
    check(status["ready"] and status["routesInstalled"] == 3, "resync restored the route")

    def rules():
        with IPRoute() as ipr:
            return [
                (r.get("priority"), r.get_attr("FRA_L3MDEV"))
                for r in ipr.get_rules(family=socket.AF_INET)
            ]

    found = await asyncio.to_thread(rules)
    check(any(l3 for _, l3 in found), f"l3mdev rule present {found}")
    for name in ("red", "blue"):
        await realizer.remove(name)
    check(await realizer.observe() == {}, "observe() empty after remove")

    def links():
        with IPRoute() as ipr:
            names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
            host = ipr.get_links(ipr.link_lookup(ifname="eth-host")[0])[0]
            return names, host.get_attr("IFLA_MASTER")

    names, master = await asyncio.to_thread(links)
    check(
        not any(n.startswith("kv") for n in names) and "red0" not in names, f"no links left {names}"
    )
    check(not master, "host interface released")
    with routes.RouteSocket() as sock:
        check(not sock.dump(protocol=routes.PROTO_KUBEVISOR), "no kubevisor routes left")
    realizer.close()


try:
    asyncio.run(main())
    print("KV-GUEST-OK", flush=True)
except SystemExit:
    print("KV-GUEST-FAIL", flush=True)
except Exception:
    traceback.print_exc()
    print("KV-GUEST-FAIL", flush=True)
