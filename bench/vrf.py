"""Benchmark: realizing VRFs through the product path, against `ip` doing the same work.

Headline rows (the targets are computed on these only). ``--vrfs`` VRFs (100), each with
``--routes`` routes (100), are realized on a scratch node (a network namespace holding the
segment bridge ``kvbr0``, as a simulated node's agent sees it). Per VRF, every row builds:

- a network namespace, ``lo`` up, IPv4 and IPv6 forwarding on;
- a veth from the node into it: node side enslaved to ``kvbr0``, aliased, up; VRF side
  ``eth0`` with the VRF's derived MAC, an alias, up, one address (172.16+.x.1/24);
- policy rules (IPv4 and IPv6, priority 1000) sending lookups to the VRF's table;
- the routes: unicast via the gateway on eth0's subnet (x.2), protocol 107, in that table;
- the VRF's cgroup context (``CgroupContext.ensure`` with no limits).

The rows:

- product: ``VRFRealizer.apply`` per VRF (netns backend, ``node_netns`` = the scratch
  node, as the agent calls it); its time includes its own read-back of status;
- ip -batch: ONE ``ip -batch`` script (namespaces and veths directly, the node side through
  ``netns exec NODE ip -batch``, each VRF namespace through ``netns exec NS ip -batch``,
  ``ip -6 rule`` and ``sysctl``: ip cannot switch namespace or family inside a batch);
- ip per object: one ``ip`` process per object above (one per route, per rule, ...).

Both baselines create the cgroup contexts with the product's ``CgroupContext.ensure`` (ip
has no cgroup command), so that part costs the same in every row.

Secondary rows (labelled "primitive", no targets): the batched route primitive alone,
``sync_routes`` per table into ONE namespace, and ``ip -batch`` of the same routes.

Every row is checked by reading the kernel back with ``ip -j`` (never the product's own
report): namespaces, links (up, on the bridge, MAC), addresses, rules, forwarding, cgroup
directories and routes (counted per table, gateway and protocol checked). A row whose read
back differs from the plan fails the run (exit 1); times of unequal work are not compared.

Rows run one after another in one process, each on a fresh scratch node, the baselines
first (namespace teardown of an earlier row continues in the kernel while later rows run,
so running the product after the baselines is the conservative order for it).
Everything is named ``kvbench<pid>-*`` and removed after each row, on failure, and on
SIGTERM/SIGINT (exit 130). Prints a table and ONE JSON line (the last line of stdout).
Never asserts a time: targets are reported, not enforced.

Run as root: ``.venv/bin/python bench/vrf.py [--vrfs 100] [--routes 100] [--rows ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
import _profiling
import _vrf_routing

# The product's VRF path. When operator/ moves, re-point these four imports; the names used
# are: vrfrealizing.VRFRealizer, vrfnaming.{ALIAS_SEGMENT, ALIAS_NODE_SIDE}, linking.RULE_PRIORITY,
# routes.{RouteSocket, KernelRoute, sync_routes}, cgroups.{CgroupContext, CGROUP_ROOT},
# planning.{DesiredVRF, DesiredInterface, DesiredRoute, interface_mac}.
from kubevisor.agent.kernel import cgroups, linking, vrfnaming, vrfrealizing
from kubevisor.agent.kernel import routes as product_routes
from kubevisor.agent.vrfs import planning

FIRST_TABLE = 1000
PROTO = product_routes.PROTO_KUBEVISOR  # 107: every row installs the same kind of route
BRIDGE = "kvbr0"
IFACE = "eth0"
PRIMITIVE_GATEWAY = "10.255.0.2"
CLOSE_TIMEOUT = 30.0

HEADLINE = ("ip-batch", "ip-per-object", "product")
SECONDARY = ("primitive", "primitive-ip-batch")
CODES = {"ip-batch": "b", "ip-per-object": "o", "product": "p", "primitive": "s",
         "primitive-ip-batch": "t"}  # fmt: skip
LABELS = {
    "ip-batch": "ip -batch (one script)",
    "ip-per-object": "ip per object",
    "product": "product: VRFRealizer.apply",
    "primitive": "primitive: sync_routes, 1 netns",
    "primitive-ip-batch": "primitive base: ip -batch, 1 netns",
}


def log(msg: str) -> None:
    print(f"[vrf] {msg}", file=sys.stderr, flush=True)


# --- the plan every row realizes (pure) ---------------------------------------------------


def prefix(vrf: int, route: int) -> str:
    index = vrf * 1000 + route
    return f"10.{index // 65536 % 200 + 1}.{index // 256 % 256}.{index % 256}/32"


@dataclass(frozen=True)
class VRF:
    """One VRF of the plan, in the terms both the product and ``ip`` need."""

    index: int
    netns: str

    @property
    def name(self) -> str:
        return f"v{self.index}"

    @property
    def table(self) -> int:
        return FIRST_TABLE + self.index

    @property
    def subnet(self) -> str:
        return f"172.{16 + self.index // 256}.{self.index % 256}"

    @property
    def address(self) -> str:
        return f"{self.subnet}.1/24"

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.2"

    @property
    def mac(self) -> str:
        return planning.interface_mac(self.name, IFACE)

    def prefixes(self, routes: int) -> list[str]:
        return [prefix(self.index, r) for r in range(routes)]


@dataclass(frozen=True)
class Row:
    """Names of one row's kernel objects: all start with ``base``."""

    base: str
    key: str
    vrfs: int
    routes: int

    @property
    def netns_prefix(self) -> str:
        return f"{self.base}{CODES[self.key]}-"

    @property
    def node(self) -> str:
        return f"{self.netns_prefix}node"

    @property
    def cgroup_parent(self) -> str:
        return f"{self.base}{CODES[self.key]}"

    def plan(self) -> list[VRF]:
        return [VRF(i, f"{self.netns_prefix}v{i}") for i in range(self.vrfs)]

    def node_side(self, vrf: VRF) -> str:
        return f"kvb{vrf.index}"  # baselines only; the product derives its own name


# --- ratios and targets (pure) -------------------------------------------------------------


def compare(seconds: dict[str, float]) -> dict[str, Any]:
    """Ratios and targets from the headline rows' times (issue 4: at least 20x faster than
    one ``ip`` per object, within 3x of ``ip -batch``; issue 12: within 2x)."""
    product, batch, each = seconds["product"], seconds["ip-batch"], seconds["ip-per-object"]
    over_batch = product / batch
    speedup = each / product
    return {
        "ratios": {
            "product_time_over_ip_batch_time": round(over_batch, 2),
            "ip_per_object_time_over_product_time": round(speedup, 2),
        },
        "targets": {
            "issue4_product_at_least_20x_faster_than_ip_per_object": speedup >= 20,
            "issue4_product_within_3x_ip_batch_time": over_batch <= 3,
            "issue12_product_within_2x_ip_batch_time": over_batch <= 2,
        },
    }


# --- kernel helpers ------------------------------------------------------------------------


def _ip(*args: str, ns: str | None = None) -> str:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _ip_json(*args: str, ns: str | None = None) -> Any:
    return json.loads(_ip("-j", *args, ns=ns) or "[]")


def _netns_names() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def _node(row: Row) -> None:
    """The scratch node: a namespace with the segment bridge, up (segmenting's job)."""
    _ip("netns", "add", row.node)
    _ip("link", "set", "lo", "up", ns=row.node)
    _ip("link", "add", BRIDGE, "type", "bridge", ns=row.node)
    _ip("link", "set", BRIDGE, "up", ns=row.node)


def _context(row: Row, vrf: VRF) -> cgroups.CgroupContext:
    return cgroups.CgroupContext(vrf.name, parent=row.cgroup_parent)


def cleanup(base: str, rows: list[Row]) -> None:
    """Remove every namespace named ``base*`` and every cgroup context of ``rows``.

    Signals are ignored meanwhile, so a second SIGTERM cannot cut the cleanup short."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for name in _netns_names():
            if name.startswith(base):
                subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        for row in rows:
            for vrf in row.plan():
                with contextlib.suppress(OSError, TimeoutError):
                    _context(row, vrf).remove()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- the rows ------------------------------------------------------------------------------


def run_product(row: Row) -> None:
    realizer = vrfrealizing.VRFRealizer(
        node_netns=row.node, netns_prefix=row.netns_prefix, cgroup_parent=row.cgroup_parent
    )
    plans = [
        planning.DesiredVRF(
            name=vrf.name,
            table=vrf.table,
            backend="netns",
            interfaces=(
                planning.DesiredInterface(
                    name=IFACE, addresses=(vrf.address,), mac=vrf.mac, bridge=BRIDGE
                ),
            ),
            routes=tuple(
                planning.DesiredRoute(prefix=p, via=vrf.gateway) for p in vrf.prefixes(row.routes)
            ),
        )
        for vrf in row.plan()
    ]

    async def apply_all() -> list[str]:
        not_ready = []
        for desired in plans:
            status = await realizer.apply(desired)
            if not status["ready"]:
                not_ready.append(f"{desired.name}: {status['message']}")
        return not_ready

    try:
        not_ready = asyncio.run(apply_all())
    finally:
        # Wait for the worker thread, so nothing is created after the cleanup; bounded, so
        # a hung netlink call cannot keep the cleanup from running.
        closer = threading.Thread(target=realizer.close, daemon=True)
        closer.start()
        closer.join(CLOSE_TIMEOUT)
        if closer.is_alive():
            log(f"product worker still busy after {CLOSE_TIMEOUT:.0f}s; cleaning up anyway")
    if not_ready:
        log(f"product reported not ready (the read-back decides): {not_ready[:3]}")


def _node_script(row: Row) -> list[str]:
    return [
        f"link set {row.node_side(v)} master {BRIDGE} alias "
        f'"{vrfnaming.ALIAS_NODE_SIDE}{v.name}/{IFACE}" up\n'
        for v in row.plan()
    ]


def _vrf_script(row: Row, vrf: VRF) -> list[str]:
    lines = [
        "link set lo up\n",
        f'link set {IFACE} address {vrf.mac} alias "{vrfnaming.ALIAS_SEGMENT}{vrf.name}/'
        f'{IFACE}" up\n',
        f"addr add {vrf.address} dev {IFACE}\n",
        f"rule add pref {linking.RULE_PRIORITY} table {vrf.table}\n",
    ]
    lines += [
        f"route add {p} via {vrf.gateway} table {vrf.table} proto {PROTO}\n"
        for p in vrf.prefixes(row.routes)
    ]
    return lines


_SYSCTL = ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]


def run_ip_batch(row: Row, scripts: Path) -> None:
    """One ``ip -batch`` process; it forks for the lines that need another namespace."""
    node_file = scripts / "node.ipb"
    node_file.write_text("".join(_node_script(row)))
    lines = [f"netns add {v.netns}\n" for v in row.plan()]
    lines += [
        f"link add {row.node_side(v)} netns {row.node} type veth peer name {IFACE} "
        f"netns {v.netns}\n"
        for v in row.plan()
    ]
    lines.append(f"netns exec {row.node} ip -batch {node_file}\n")
    for vrf in row.plan():
        vrf_file = scripts / f"{vrf.name}.ipb"
        vrf_file.write_text("".join(_vrf_script(row, vrf)))
        lines.append(f"netns exec {vrf.netns} ip -batch {vrf_file}\n")
        lines.append(
            f"netns exec {vrf.netns} ip -6 rule add pref {linking.RULE_PRIORITY} "
            f"table {vrf.table}\n"
        )
        lines.append(f"netns exec {vrf.netns} {' '.join(_SYSCTL)}\n")
    main_file = scripts / "main.ipb"
    main_file.write_text("".join(lines))
    subprocess.run(["ip", "-batch", str(main_file)], check=True, capture_output=True)
    for vrf in row.plan():
        _context(row, vrf).ensure(planning.Limits())


def run_ip_per_object(row: Row) -> None:
    """One ``ip`` process per namespace, link, address, rule and route."""
    for vrf in row.plan():
        ns, table = vrf.netns, str(vrf.table)
        pref = str(linking.RULE_PRIORITY)
        _ip("netns", "add", ns)
        _ip("link", "add", row.node_side(vrf), "netns", row.node, "type", "veth",
            "peer", "name", IFACE, "netns", ns)  # fmt: skip
        _ip("link", "set", row.node_side(vrf), "master", BRIDGE, "alias",
            f"{vrfnaming.ALIAS_NODE_SIDE}{vrf.name}/{IFACE}", "up", ns=row.node)  # fmt: skip
        _ip("link", "set", "lo", "up", ns=ns)
        subprocess.run(["ip", "netns", "exec", ns, *_SYSCTL], check=True, capture_output=True)
        _ip("link", "set", IFACE, "address", vrf.mac, "alias",
            f"{vrfnaming.ALIAS_SEGMENT}{vrf.name}/{IFACE}", "up", ns=ns)  # fmt: skip
        _ip("addr", "add", vrf.address, "dev", IFACE, ns=ns)
        _ip("rule", "add", "pref", pref, "table", table, ns=ns)
        _ip("-6", "rule", "add", "pref", pref, "table", table, ns=ns)
        for p in vrf.prefixes(row.routes):
            _ip("route", "add", p, "via", vrf.gateway, "table", table, "proto", str(PROTO),
                ns=ns)  # fmt: skip
        _context(row, vrf).ensure(planning.Limits())


def _primitive_netns(row: Row) -> str:
    """One namespace with a veth whose far end is the gateway every route points at."""
    ns = f"{row.netns_prefix}routes"
    _ip("netns", "add", ns)
    _ip("link", "set", "lo", "up", ns=ns)
    _ip("link", "add", "gw0", "type", "veth", "peer", "name", "gw1", ns=ns)
    _ip("addr", "add", "10.255.0.1/16", "dev", "gw0", ns=ns)
    _ip("link", "set", "gw0", "up", ns=ns)
    _ip("link", "set", "gw1", "up", ns=ns)
    return ns


def run_primitive(row: Row, ns: str) -> None:
    wanted = [
        [
            product_routes.KernelRoute(dst=p, table=vrf.table, gateway=PRIMITIVE_GATEWAY)
            for p in vrf.prefixes(row.routes)
        ]
        for vrf in row.plan()
    ]
    with product_routes.RouteSocket(ns) as sock:
        for vrf, table_routes in zip(row.plan(), wanted, strict=True):
            product_routes.sync_routes(sock, vrf.table, table_routes, whole_namespace=False)


def run_primitive_ip_batch(row: Row, ns: str, scripts: Path) -> None:
    lines = [
        f"route add {p} via {PRIMITIVE_GATEWAY} table {vrf.table} proto {PROTO}\n"
        for vrf in row.plan()
        for p in vrf.prefixes(row.routes)
    ]
    path = scripts / "routes.ipb"
    path.write_text("".join(lines))
    subprocess.run(["ip", "-n", ns, "-batch", str(path)], check=True, capture_output=True)


# --- reading the kernel back ---------------------------------------------------------------


def _host(dst: str) -> str:
    return dst if "/" in dst else f"{dst}/32"


def count_routes(dumped: list[dict[str, Any]], *, table: int | None, gateway: str,
                 wanted: set[str]) -> int:  # fmt: skip
    """Routes of ``ip -j route show`` that are the planned kind: a wanted prefix, unicast,
    via ``gateway``, protocol 107 (and in ``table`` when the dump spans tables)."""
    return sum(
        1
        for r in dumped
        if _host(r.get("dst", "")) in wanted
        and r.get("type", "unicast") == "unicast"
        and r.get("gateway") == gateway
        and r.get("protocol") == str(PROTO)
        and (table is None or r.get("table") == str(table))
    )


def _has_rule(rules: list[dict[str, Any]], table: int) -> bool:
    pref = linking.RULE_PRIORITY
    return any(r.get("priority") == pref and r.get("table") == str(table) for r in rules)


def _cgroup_dirs(row: Row, vrf: VRF) -> bool:
    root = cgroups.CGROUP_ROOT
    return (root / row.cgroup_parent / vrf.name).is_dir() or all(
        (root / c / row.cgroup_parent / vrf.name).is_dir() for c in ("cpu", "memory")
    )


@dataclass
class ReadBack:
    vrfs_complete: int = 0
    routes: int = 0
    problems: list[str] | None = None


def read_back(row: Row) -> ReadBack:
    """What the kernel holds for a headline row, checked piece by piece."""
    out = ReadBack(problems=[])
    assert out.problems is not None
    names = set(_netns_names())
    ports = {
        link.get("ifname")
        for link in _ip_json("link", "show", "master", BRIDGE, ns=row.node)
        if "UP" in link.get("flags", [])
    }
    if len(ports) != row.vrfs:
        out.problems.append(f"{len(ports)} veths up on {BRIDGE}, want {row.vrfs}")
    for vrf in row.plan():
        if vrf.netns not in names:
            out.problems.append(f"{vrf.name}: no namespace {vrf.netns}")
            continue
        ns = vrf.netns
        wrong = []
        links = _ip_json("addr", "show", "dev", IFACE, ns=ns)
        link = links[0] if links else {}
        if link.get("address") != vrf.mac or "UP" not in link.get("flags", []):
            wrong.append("eth0 missing, down or wrong MAC")
        local = {f"{a.get('local')}/{a.get('prefixlen')}" for a in link.get("addr_info", [])}
        if vrf.address not in local:
            wrong.append(f"address {vrf.address} missing")
        if not _has_rule(_ip_json("rule", "show", ns=ns), vrf.table):
            wrong.append("IPv4 rule missing")
        if not _has_rule(_ip_json("-6", "rule", "show", ns=ns), vrf.table):
            wrong.append("IPv6 rule missing")
        forwarding = subprocess.run(
            ["ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.ip_forward",
             "net.ipv6.conf.all.forwarding"],
            capture_output=True, text=True, check=False,
        ).stdout.split()  # fmt: skip
        if forwarding != ["1", "1"]:
            wrong.append(f"forwarding {forwarding}")
        if not _cgroup_dirs(row, vrf):
            wrong.append("cgroup context missing")
        dumped = _ip_json("route", "show", "table", str(vrf.table), ns=ns)
        got = count_routes(
            dumped, table=None, gateway=vrf.gateway, wanted=set(vrf.prefixes(row.routes))
        )
        out.routes += got
        if got != row.routes or len(dumped) != row.routes:
            wrong.append(f"{got} planned routes of {len(dumped)} in table {vrf.table}")
        if wrong:
            out.problems.append(f"{vrf.name}: {'; '.join(wrong)}")
        else:
            out.vrfs_complete += 1
    return out


def read_back_primitive(row: Row, ns: str) -> ReadBack:
    dumped = _ip_json("route", "show", "table", "all", ns=ns)
    wanted = {p for vrf in row.plan() for p in vrf.prefixes(row.routes)}
    got = sum(
        count_routes(dumped, table=vrf.table, gateway=PRIMITIVE_GATEWAY,
                     wanted=set(vrf.prefixes(row.routes)))
        for vrf in row.plan()
    )  # fmt: skip
    problems = [] if got == len(wanted) else [f"{got} planned routes, want {len(wanted)}"]
    return ReadBack(vrfs_complete=row.vrfs if not problems else 0, routes=got, problems=problems)


# --- driver --------------------------------------------------------------------------------


@contextlib.contextmanager
def _row(base: str, made: list[Row], key: str, vrfs: int, routes: int) -> Iterator[Row]:
    row = Row(base, key, vrfs, routes)
    made.append(row)
    log(f"row {key}: {LABELS[key]}")
    try:
        yield row
    finally:
        cleanup(f"{row.netns_prefix}", [row])


def measure(key: str, row: Row, scripts: Path) -> tuple[float, ReadBack]:
    """Time one row from an empty scratch node; read it back outside the timing."""
    body: Callable[[], None]
    if key in HEADLINE:
        _node(row)
        body = {
            "product": lambda: run_product(row),
            "ip-batch": lambda: run_ip_batch(row, scripts),
            "ip-per-object": lambda: run_ip_per_object(row),
        }[key]
        start = time.perf_counter()
        body()
        seconds = time.perf_counter() - start
        return seconds, read_back(row)
    ns = _primitive_netns(row)
    body = (lambda: run_primitive(row, ns)) if key == "primitive" else (
        lambda: run_primitive_ip_batch(row, ns, scripts))  # fmt: skip
    start = time.perf_counter()
    body()
    seconds = time.perf_counter() - start
    return seconds, read_back_primitive(row, ns)


def table(results: dict[str, tuple[float, ReadBack]], vrfs: int) -> str:
    product = results["product"][0] if "product" in results else None
    lines = [f"{'row':36} {'VRFs ok':>7} {'routes':>7} {'seconds':>9} {'routes/s':>9} "
             f"{'time / product time':>20}"]  # fmt: skip
    for key, (seconds, back) in results.items():
        ratio = f"{seconds / product:20.2f}" if product and key in HEADLINE else f"{'-':>20}"
        lines.append(f"{LABELS[key]:36} {back.vrfs_complete:>4}/{vrfs:<2} {back.routes:7d} "
                     f"{seconds:9.3f} {back.routes / seconds:9.0f} {ratio}")  # fmt: skip
    return "\n".join(lines)


def routing_main(prefixes: int) -> int:
    """``--routing``: see `_vrf_routing`; a table and one JSON line."""
    if not 0 < prefixes <= 16384:
        print("--prefixes must be 1..16384", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench/vrf.py needs root (network namespaces, cgroups)", file=sys.stderr)
        return 2
    try:
        with h.sigterm_as_interrupt():
            result = _vrf_routing.run(f"kvbench{os.getpid()}-", prefixes)
    except KeyboardInterrupt:
        log("interrupted; cleaned up")
        return 130
    print(_vrf_routing.table(result, prefixes))
    line = {"bench": "vrf-routing", "prefixes": prefixes, **result}
    print(json.dumps(line, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/vrf.py", description=__doc__.splitlines()[0])
    parser.add_argument("--vrfs", type=int, default=100, help="VRFs per row (<= 4096)")
    parser.add_argument("--routes", type=int, default=100, help="routes per VRF (<= 1000)")
    parser.add_argument("--rows", default=",".join(HEADLINE + SECONDARY),
                        help="comma-separated rows to run, in order (default: all); targets "
                        "need ip-batch, ip-per-object and product")  # fmt: skip
    parser.add_argument(
        "--routing",
        action="store_true",
        help="instead: a VRF's routing daemon learning --prefixes routes from "
        "a BGP peer, against the same daemon in a bare namespace (issue 18)",
    )
    parser.add_argument("--prefixes", type=int, default=10_000,
                        help="prefixes the peer announces with --routing (<= 16384)")  # fmt: skip
    parser.add_argument("--profile", nargs="?", const="", default=None, metavar="DIR",
                        help="py-spy profile of the product row (the agent's realizer, in "
                        "this process) into DIR (default: a new temp dir)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.profile == "":
        args.profile = tempfile.mkdtemp(prefix="kvbench-profile-")
    if args.routing:
        return routing_main(args.prefixes)
    keys = [k for k in args.rows.split(",") if k]
    unknown = set(keys) - set(LABELS)
    if unknown or not 0 < args.vrfs <= 4096 or not 0 < args.routes <= 1000:
        parser.error(f"bad --rows {sorted(unknown)} or size out of range")
    if os.geteuid() != 0:
        print("bench/vrf.py needs root (network namespaces, cgroups)", file=sys.stderr)
        return 2
    base = f"kvbench{os.getpid()}-"
    made: list[Row] = []
    results: dict[str, tuple[float, ReadBack]] = {}
    current = ""
    try:
        with h.sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix=base) as tmp:
            for key in keys:
                current = key
                with _row(base, made, key, args.vrfs, args.routes) as row:
                    # --profile: the product row runs the agent's realizer in this process
                    profiles = _profiling.Profiles(Path(args.profile)) if (
                        args.profile is not None and key == "product"
                    ) else None  # fmt: skip
                    if profiles is not None and not profiles.attach("agent-realizer", os.getpid()):
                        log("--profile: py-spy not found (.venv/bin/pip install py-spy)")
                        profiles = None
                    try:
                        results[key] = measure(key, row, Path(tmp))
                    finally:
                        if profiles is not None:
                            profiles.stop()
                            log(f"profile of the product row written to {args.profile}")
                back = results[key][1]
                if back.problems:
                    log(f"row {key}: kernel read-back differs from the plan: {back.problems[:5]}")
                    print(table(results, args.vrfs))
                    return 1
            current = ""
    except KeyboardInterrupt:
        log(f"interrupted in row {current or '-'}; cleaned up")
        return 130
    finally:
        cleanup(base, made)
    print(table(results, args.vrfs))
    line: dict[str, Any] = {
        "bench": "vrf",
        "vrfs": args.vrfs,
        "routes_per_vrf": args.routes,
        "rows": {
            key: {
                "label": LABELS[key],
                "seconds": round(seconds, 3),
                "vrfs_read_back": back.vrfs_complete,
                "routes_read_back": back.routes,
                "routes_per_s": round(back.routes / seconds),
            }
            for key, (seconds, back) in results.items()
        },
    }
    if all(k in results for k in HEADLINE):
        line |= compare({k: results[k][0] for k in HEADLINE})
        r = line["ratios"]
        print(f"product time / ip -batch time      = {r['product_time_over_ip_batch_time']:.2f}"
              "  (issue 4 target <= 3, issue 12 target <= 2)")  # fmt: skip
        print(
            f"ip per object time / product time  = "
            f"{r['ip_per_object_time_over_product_time']:.2f}  (issue 4 target >= 20)"
        )
    print(json.dumps(line, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
