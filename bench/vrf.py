"""Benchmark: programming VRF routes through the agent's netlink path.

100 VRFs x 100 routes (defaults) into 100 tables of a scratch network namespace, four ways,
in the same run, each from empty tables:

- agent: `vrfrealizing.sync_routes` per VRF (strict dump of the table, diff, one batched
  sendmsg of RTM_NEWROUTE messages with an ACK only on the last of each chunk);
- ip -batch: one `ip -batch` process for all routes (the kernel's own pace);
- ip per route: one `ip route add` process per route (what a naive agent does);
- pyroute2 sequential: one request-and-wait `IPRoute.route("add")` per route.

The two per-route baselines are measured on a sample (``--sample`` routes, default 2000)
and reported as rates; ``--sample 0`` runs them on every route. A fifth row measures the
whole `VRFRealizer.apply` for netns-backend VRFs (namespace creation, rules, routes).

Prints a table and ONE JSON line. Never asserts a time: targets are reported, not enforced.
Run as root: ``.venv/bin/python bench/vrf.py [--vrfs 100] [--routes 100] [--sample 2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from pyroute2 import IPRoute  # baseline only; the product imports it in agent/netlink

from kubevisor.agent.netlink import routes, vrfrealizing
from kubevisor.agent.vrfs import planning

GATEWAY = "10.255.0.2"
FIRST_TABLE = 1000


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _prefix(vrf: int, route: int) -> str:
    index = vrf * 1000 + route
    return f"10.{index // 65536 % 200 + 1}.{index // 256 % 256}.{index % 256}/32"


def _scratch(name: str) -> None:
    """A namespace with a veth whose far end is the gateway every route points at."""
    _ip("netns", "add", name)
    _ip("-n", name, "link", "set", "lo", "up")
    _ip("-n", name, "link", "add", "gw0", "type", "veth", "peer", "name", "gw1")
    _ip("-n", name, "addr", "add", "10.255.0.1/16", "dev", "gw0")
    _ip("-n", name, "link", "set", "gw0", "up")
    _ip("-n", name, "link", "set", "gw1", "up")


def _count(name: str) -> int:
    with routes.RouteSocket(name) as sock:
        return sum(
            1
            for r in sock.dump()
            if FIRST_TABLE <= r.table < FIRST_TABLE + 10_000 and r.dst != "0.0.0.0/0"
        )


def _timed(name: str, body: Callable[[], None]) -> float:
    _scratch(name)
    start = time.perf_counter()
    body()
    return time.perf_counter() - start


def _agent(name: str, vrfs: int, per: int) -> Callable[[], None]:
    wanted = [
        [
            routes.KernelRoute(dst=_prefix(v, r), table=FIRST_TABLE + v, gateway=GATEWAY)
            for r in range(per)
        ]
        for v in range(vrfs)
    ]

    def body() -> None:
        with routes.RouteSocket(name) as sock:
            for v, table_routes in enumerate(wanted):
                vrfrealizing.sync_routes(sock, FIRST_TABLE + v, table_routes, whole_namespace=False)

    return body


def _pairs(vrfs: int, per: int, limit: int) -> list[tuple[int, int]]:
    pairs = [(v, r) for v in range(vrfs) for r in range(per)]
    return pairs[:limit] if limit else pairs


def _ip_batch(name: str, vrfs: int, per: int) -> Callable[[], None]:
    lines = [
        f"route add {_prefix(v, r)} via {GATEWAY} table {FIRST_TABLE + v}\n"
        for v, r in _pairs(vrfs, per, 0)
    ]

    def body() -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".ipbatch") as handle:
            handle.writelines(lines)
            handle.flush()
            subprocess.run(["ip", "-n", name, "-batch", handle.name], check=True)

    return body


def _ip_each(name: str, pairs: list[tuple[int, int]]) -> Callable[[], None]:
    def body() -> None:
        for v, r in pairs:
            subprocess.run(
                [
                    "ip",
                    "-n",
                    name,
                    "route",
                    "add",
                    _prefix(v, r),
                    "via",
                    GATEWAY,
                    "table",
                    str(FIRST_TABLE + v),
                ],
                check=True,
            )

    return body


def _pyroute2_each(name: str, pairs: list[tuple[int, int]]) -> Callable[[], None]:
    def body() -> None:
        with IPRoute(netns=name, flags=0) as ipr:
            for v, r in pairs:
                ipr.route("add", dst=_prefix(v, r), gateway=GATEWAY, table=FIRST_TABLE + v)

    return body


async def _realizer(prefix: str, vrfs: int, per: int) -> tuple[float, int]:
    """Whole apply of netns-backend VRFs with blackhole routes (no devices needed)."""
    realizer = vrfrealizing.VRFRealizer(netns_prefix=prefix, cgroup_parent=f"{prefix}cg")
    plans = [
        planning.DesiredVRF(
            name=f"v{v}",
            table=FIRST_TABLE + v,
            backend="netns",
            routes=tuple(
                planning.DesiredRoute(prefix=_prefix(v, r), type="blackhole") for r in range(per)
            ),
        )
        for v in range(vrfs)
    ]
    try:
        start = time.perf_counter()
        installed = 0
        for desired in plans:
            installed += (await realizer.apply(desired))["routesInstalled"]
        return time.perf_counter() - start, installed
    finally:
        for desired in plans:
            await realizer.remove(desired.name)
        realizer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vrfs", type=int, default=100)
    parser.add_argument("--routes", type=int, default=100)
    parser.add_argument("--sample", type=int, default=2000, help="0 = all routes")
    parser.add_argument("--no-realizer", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/vrf.py needs root (network namespaces)", file=sys.stderr)
        return 2
    total = args.vrfs * args.routes
    sample = _pairs(args.vrfs, args.routes, args.sample)
    base = f"kvbench{os.getpid()}"
    rows: list[tuple[str, int, float]] = []
    cases = [
        ("agent (batched netlink)", total, _agent),
        ("ip -batch (one process)", total, _ip_batch),
        ("ip route add per route", len(sample), None),
        ("pyroute2 sequential", len(sample), None),
    ]
    made: list[str] = []
    try:
        for index, (label, count, make) in enumerate(cases):
            name = f"{base}-{index}"
            made.append(name)
            if make is not None:
                body = make(name, args.vrfs, args.routes)
            elif label.startswith("ip route"):
                body = _ip_each(name, sample)
            else:
                body = _pyroute2_each(name, sample)
            seconds = _timed(name, body)
            installed = _count(name)
            if installed != count:
                print(f"{label}: {installed} routes installed, expected {count}", file=sys.stderr)
                return 1
            rows.append((label, count, seconds))
            _ip("netns", "del", name)
            made.remove(name)
        if not args.no_realizer:
            seconds, installed = asyncio.run(_realizer(f"{base}-r-", args.vrfs, args.routes))
            rows.append(("VRFRealizer.apply, netns backend", installed, seconds))
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)

    rate = {label: count / seconds for label, count, seconds in rows}
    agent = rate["agent (batched netlink)"]
    per_route = rate["ip route add per route"]
    batch = rate["ip -batch (one process)"]
    print(f"{'method':36} {'routes':>7} {'seconds':>9} {'routes/s':>11} {'agent x':>8}")
    for label, count, seconds in rows:
        ratio = agent / rate[label]
        print(f"{label:36} {count:7d} {seconds:9.3f} {rate[label]:11.0f} {ratio:8.2f}")
    result = {
        "bench": "vrf",
        "vrfs": args.vrfs,
        "routes_per_vrf": args.routes,
        "baseline_sample": len(sample),
        "routes_per_s": {label: round(r) for label, r in rate.items()},
        "agent_vs_ip_per_route": round(agent / per_route, 2),
        "agent_vs_ip_batch": round(agent / batch, 2),
        "target_20x_per_route": agent / per_route >= 20,
        "target_within_3x_ip_batch": agent * 3 >= batch,
    }
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
