"""``bench/vrf.py --routing``: a VRF's routing daemon learning a full table from a peer.

Per daemon (BIRD, and FRR when installed), two rows, the baseline first:

- bare: the same daemon argv (`supervising.DRIVERS[daemon].argv`, same config) started
  by hand with ``ip netns exec`` in a bare network namespace veth-linked to the peer, no kubevisor;
- product: a VRF realized by `VRFRealizer.apply` on a scratch node (netns backend, its
  interface on the node's segment bridge, the peer's veth on that bridge too), its daemon
  started by `Supervisor.ensure` (the VRF's namespace and cgroup), as the agent does.

The peer is BIRD in its own namespace announcing ``--prefixes`` /24s (100.64.0.0/10) over
eBGP, started before the row's clock. Reported per row: seconds from the start (VRF
creation for product, the daemon's exec for bare) to the session Established, from
Established to every prefix learned (read from the receiver through its own control
socket with the product's session parsers, the same for both rows), and routes learned
per second over that span. Times come from polling every 20 ms (both rows alike).
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubevisor.agent.kernel import vrfrealizing
from kubevisor.agent.vrfs import daemons, planning, supervising
from kubevisor.api import vrfs

POLL = 0.02
TABLE = 2600
ME, PEER = "10.9.0.1", "10.9.0.2"


def log(msg: str) -> None:
    print(f"[vrf --routing] {msg}", file=sys.stderr, flush=True)


def _ip(*args: str, ns: str | None = None, check: bool = True) -> None:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    subprocess.run(argv, check=check, capture_output=True)


def peer_config(prefixes: int) -> str:
    base = int(ipaddress.IPv4Address("100.64.0.0"))
    routes = "\n".join(
        f"  route {ipaddress.IPv4Address(base + i * 256)}/24 blackhole;" for i in range(prefixes)
    )
    return (
        f"router id {PEER};\nprotocol device {{}}\nprotocol static {{ ipv4;\n{routes}\n}}\n"
        f"protocol bgp receiver {{ local {PEER} as 65002; neighbor {ME} as 65001;"
        " connect delay time 1; connect retry time 1;"
        " ipv4 { import none; export all; }; }\n"
    )


def receiver_config(daemon: daemons.Daemon) -> str:
    if daemon == "frr":
        return (
            "frr defaults traditional\nrouter bgp 65001\n"
            f" bgp router-id {ME}\n no bgp ebgp-requires-policy\n"
            f" neighbor {PEER} remote-as 65002\n neighbor {PEER} timers connect 1\nexit\n"
        )
    return (
        f"router id {ME};\nprotocol device {{}}\n"
        f"protocol kernel {{ ipv4 {{ export all; }}; kernel table {TABLE}; }}\n"
        f"protocol bgp peer {{ local {ME} as 65001; neighbor {PEER} as 65002;"
        " connect delay time 1; connect retry time 1;"
        " ipv4 { import all; export none; }; }\n"
    )


def _learned(f: daemons.Files, config: str) -> tuple[bool, int]:
    summary = supervising.read_sessions(f, config)
    if summary is None or not summary.sessions:
        return False, 0
    return summary.up == len(summary.sessions), summary.learned


def _watch(
    f: daemons.Files, config: str, start: float, prefixes: int, timeout: float
) -> dict[str, float]:
    established = None
    deadline = start + timeout
    while time.monotonic() < deadline:
        up, learned = _learned(f, config)
        now = time.monotonic()
        if up and established is None:
            established = now
        if established is not None and learned >= prefixes:
            # seen in one poll: the span is below the poll period, counted as one period
            span = max(now - established, POLL)
            return {
                "start_to_established_s": established - start,
                "start_to_all_s": now - start,
                "established_to_all_s": span,
                "routes_per_s": prefixes / span,
            }
        time.sleep(POLL)
    raise RuntimeError(f"{f.daemon}: not {prefixes} routes within {timeout} s")


class Row:
    """One row's namespaces, processes and directories, removed by `close`."""

    def __init__(self, base: str, key: str) -> None:
        self.peer_ns = f"{base}{key}-peer"
        self.namespaces = [self.peer_ns]
        self.processes: list[subprocess.Popen[bytes]] = []
        self.dir = Path(tempfile.mkdtemp(prefix=f"{base}{key}-"))
        self.dir.chmod(0o755)  # the daemons' accounts reach their run directories

    def start_peer(self, prefixes: int) -> None:
        _ip("netns", "add", self.peer_ns)
        _ip("link", "set", "lo", "up", ns=self.peer_ns)
        conf = self.dir / "peer.conf"
        conf.write_text(peer_config(prefixes))
        self.processes.append(
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.peer_ns,
                    "bird",
                    "-f",
                    "-c",
                    str(conf),
                    "-s",
                    str(self.dir / "peer.ctl"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def link(self, other_ns: str, *, other_name: str, address: str | None) -> None:
        _ip("link", "add", "p0", "type", "veth", "peer", "name", other_name, "netns", other_ns,
            ns=self.peer_ns)  # fmt: skip
        _ip("addr", "add", f"{PEER}/24", "dev", "p0", ns=self.peer_ns)
        _ip("link", "set", "p0", "up", ns=self.peer_ns)
        if address:
            _ip("addr", "add", address, "dev", other_name, ns=other_ns)
        _ip("link", "set", other_name, "up", ns=other_ns)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
        for ns in self.namespaces:
            _ip("netns", "del", ns, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_bare(base: str, daemon: daemons.Daemon, prefixes: int, timeout: float) -> dict[str, float]:
    row = Row(base, f"{daemon}-bare")
    try:
        ns = f"{base}{daemon}-bare"
        row.namespaces.append(ns)
        _ip("netns", "add", ns)
        _ip("link", "set", "lo", "up", ns=ns)
        row.start_peer(prefixes)
        row.link(ns, other_name="red0", address=f"{ME}/24")
        run_dir = row.dir / "daemon"
        run_dir.mkdir()
        user = supervising.account(daemons.USERS[daemon])
        f = daemons.files(run_dir, daemon)
        config = receiver_config(daemon)
        supervising.prepare_start(f, config, user)
        argv = supervising.DRIVERS[daemon].argv(f, user=user.name if user else None, config=config)
        start = time.monotonic()
        with f.log.open("wb") as out:
            row.processes.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", ns, *argv],
                    cwd=run_dir,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        return _watch(f, config, start, prefixes, timeout)
    finally:
        row.close()


async def _product(
    base: str, daemon: daemons.Daemon, prefixes: int, deadline_s: float
) -> dict[str, float]:
    row = Row(base, f"{daemon}-prod")
    node = f"{base}{daemon}-node"
    row.namespaces.append(node)
    realizer = vrfrealizing.VRFRealizer(node_netns=node)
    supervisor = supervising.Supervisor(realizer, on_change=lambda: None)
    name = f"bench.{daemon}"
    try:
        _ip("netns", "add", node)
        _ip("link", "set", "lo", "up", ns=node)
        _ip("link", "add", "br-red", "type", "bridge", ns=node)
        _ip("link", "set", "br-red", "up", ns=node)
        row.start_peer(prefixes)
        row.link(node, other_name="peer0", address=None)
        _ip("link", "set", "peer0", "master", "br-red", ns=node)
        spec = vrfs.VRFSpec.model_validate(
            {"backend": "netns",
             "interfaces": [{"name": "red0", "network": "red", "addresses": [f"{ME}/24"]}]}
        )  # fmt: skip
        desired = planning.plan(name, spec, table=TABLE, bridge_for=lambda n, v: "br-red",
                                kernel_has_vrf=False)  # fmt: skip
        config = receiver_config(daemon)
        start = time.monotonic()
        status = await realizer.apply(desired)
        if not status["ready"]:
            raise RuntimeError(f"VRF not realized: {status}")
        report = await supervisor.ensure(name, daemons.Wanted(daemon, config))
        if report.problem is not None:
            raise RuntimeError(f"daemon not started: {report.problem}")
        f = supervisor.files(name, daemon)
        return await asyncio.to_thread(_watch, f, config, start, prefixes, deadline_s)
    finally:
        await supervisor.stop(name)
        supervisor.close()
        await realizer.remove(name)
        realizer.close()
        row.close()


def run(base: str, prefixes: int, timeout: float = 300.0) -> dict[str, Any]:
    """Both rows per installed daemon; the table rows and the JSON fields."""
    installed = supervising.installed()
    rows: dict[str, dict[str, float]] = {}
    for daemon in ("bird", "frr"):
        if daemon not in installed:
            log(f"{daemon} not installed; its rows are skipped")
            continue
        log(f"{daemon}: bare namespace, {prefixes} prefixes")
        rows[f"{daemon}-bare"] = run_bare(base, daemon, prefixes, timeout)
        log(f"{daemon}: kubevisor VRF, {prefixes} prefixes")
        rows[f"{daemon}-product"] = asyncio.run(_product(base, daemon, prefixes, timeout))
    ratios = {
        f"{d}_product_over_bare_routes_per_s": rows[f"{d}-product"]["routes_per_s"]
        / rows[f"{d}-bare"]["routes_per_s"]
        for d in ("bird", "frr")
        if f"{d}-bare" in rows
    }
    return {"rows": rows, "ratios": ratios}


def table(result: dict[str, Any], prefixes: int) -> str:
    lines = [
        f"routes learned from a peer announcing {prefixes} prefixes over eBGP",
        f"{'row':<14} {'start->Established s':>21} {'start->all s':>13}"
        f" {'Established->all s':>19} {'routes/s':>10}",
    ]
    for key, row in result["rows"].items():
        lines.append(
            f"{key:<14} {row['start_to_established_s']:>21.3f} {row['start_to_all_s']:>13.3f}"
            f" {row['established_to_all_s']:>19.3f} {row['routes_per_s']:>10.0f}"
        )
    for key, ratio in result["ratios"].items():
        lines.append(f"{key} = {ratio:.2f}  (target: ~1, the context is the only overhead)")
    return "\n".join(lines)
