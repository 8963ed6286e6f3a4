"""Live migration: raw ``virsh migrate --live --p2p`` against our Migration (issue 8).

Same VMs, same run, several rounds: a tiny TCG guest (256 MiB and 1 GiB, idle and dirtying
memory) moves between two simulated nodes, first with raw virsh between the two libvirtds
(downtime and bytes from ``virsh domjobinfo --completed``), then through a Migration object
(create -> ``Succeeded``, figures from ``status.totalTimeMs/downtimeMs/bytesTransferred``).
Prints a table and one JSON line; targets are reported (target-met column), never asserted.
Exits non-zero when a result is wrong (a raw migration failed, or the guest did not end up
running on the target only).

Our path needs a dev cluster whose controller reconciles Migrations (``--kubeconfig`` and
``--vm`` of a running VM); until then it prints "ours: not available (...)".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Any

from kubevisor.api import kinds
from kubevisor.devenv import guest, nodes

CLUSTER = "kvmigb"
BOOT_DEADLINE_S = 240.0
#: A guest loop writing pages: a 64 MiB tmpfs file rewritten forever (dirty rate well
#: above what TCG migrates per iteration without auto-converge).
DIRTIER = (
    "mount -t tmpfs -o size=80m tmpfs /mnt 2>/dev/null; echo kv-dirty-start; "
    "while true; do dd if=/dev/zero of=/mnt/d bs=1M count=64 conv=notrunc 2>/dev/null; done\n"
)
IDLE = "echo kv-idle-start; while true; do sleep 1; done\n"
TARGET_RATIO = 1.5
TARGET_DOWNTIME_MS = 50.0
NOT_AVAILABLE = "ours: not available (Migration reconciler not wired)"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_jobinfo(text: str) -> dict[str, float]:
    """``virsh domjobinfo --completed`` output -> total_ms, downtime_ms, bytes (pure)."""
    out: dict[str, float] = {}
    units = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        m = re.match(r"([\d.]+)\s*(\S+)?", value)
        if not m:
            continue
        number, unit = float(m.group(1)), m.group(2) or ""
        if key == "Time elapsed":
            out["total_ms"] = number
        elif key == "Total downtime":
            out["downtime_ms"] = number
        elif key == "Data processed":
            out["bytes"] = number * units.get(unit, 1)
    return out


def summarise(rounds: list[dict[str, float]]) -> dict[str, float | None]:
    """Median per figure over the rounds (pure); None when no round reported it."""
    keys = ("wall_ms", "total_ms", "downtime_ms", "bytes")
    return {
        k: (statistics.median([r[k] for r in rounds if k in r]) if any(k in r for r in rounds)
            else None)
        for k in keys
    }  # fmt: skip


def targets(case: str, raw: dict[str, Any], ours: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's targets for one case (pure): ratio for idle-256, downtime always, and
    convergence for the dirtying guests. ``None`` where our path is not available."""
    out: dict[str, Any] = {}
    if ours is None:
        return {"ratio": None, "ratio_met": None, "downtime_met": None, "converged": None}
    ratio = (
        (ours["wall_ms"] / raw["wall_ms"]) if ours.get("wall_ms") and raw.get("wall_ms") else None
    )
    out["ratio"] = round(ratio, 2) if ratio is not None else None
    out["ratio_met"] = (ratio <= TARGET_RATIO) if ratio is not None and case == "idle-256" else None
    dt = ours.get("downtime_ms")
    out["downtime_met"] = dt is not None and dt <= TARGET_DOWNTIME_MS
    out["converged"] = bool(ours.get("succeeded")) if case.startswith("dirty") else None
    return out


def table(results: list[dict[str, Any]]) -> str:
    """The human table (pure)."""
    rows = [f"{'case':<10} {'path':<5} {'wall ms':>9} {'total ms':>9} {'down ms':>8} "
            f"{'MiB':>8} {'ratio':>6} target-met"]  # fmt: skip

    def fmt(v: float | None, scale: float = 1.0) -> str:
        return "-" if v is None else f"{v / scale:.0f}" if scale != 1 else f"{v:.0f}"

    for r in results:
        for path in ("raw", "ours"):
            s = r.get(path)
            if s is None:
                rows.append(f"{r['case']:<10} {path:<5} {NOT_AVAILABLE}")
                continue
            t = r["targets"] if path == "ours" else {}
            met = ",".join(f"{k}={v}" for k, v in t.items() if k != "ratio" and v is not None)
            ratio = t.get("ratio")
            rows.append(
                f"{r['case']:<10} {path:<5} {fmt(s['wall_ms']):>9} {fmt(s['total_ms']):>9} "
                f"{fmt(s['downtime_ms']):>8} {fmt(s['bytes'], 1024**2):>8} "
                f"{'-' if ratio is None else ratio:>6} {met or '-'}"
            )
    return "\n".join(rows)


def virsh(uri: str, *args: str, timeout: float = 600.0) -> str:
    return subprocess.run(
        ["virsh", "-c", uri, *args], capture_output=True, text=True, check=True, timeout=timeout
    ).stdout


def raw_round(src: nodes.SimNode, dst: nodes.SimNode, dom: str) -> dict[str, float]:
    """One raw p2p live migration src -> dst, timed, with libvirt's completed-job figures."""
    # --unsafe as agent/libvirt/migrating passes for shared storage: libvirt trusts only
    # cluster filesystems as shared, and the simulated nodes share a bind mount.
    started = time.perf_counter()
    flags = ("--live", "--p2p", "--persistent", "--undefinesource", "--unsafe")
    virsh(src.libvirt_uri, "migrate", *flags, dom, dst.tcp_uri)
    wall = (time.perf_counter() - started) * 1000
    figures: dict[str, float] = {}
    for uri in (src.libvirt_uri, dst.libvirt_uri):  # the source forgets an undefined domain
        try:
            figures = parse_jobinfo(virsh(uri, "domjobinfo", "--completed", dom))
        except subprocess.CalledProcessError:
            continue
        if figures:
            break
    state = virsh(dst.libvirt_uri, "domstate", dom).strip()
    if state != "running":
        raise RuntimeError(f"{dom} is {state!r} on {dst.name} after migrating")
    if dom in virsh(src.libvirt_uri, "list", "--all", "--name").split():
        raise RuntimeError(f"{dom} still defined on {src.name} after --undefinesource")
    return {"wall_ms": wall, **figures}


def ours_round(
    kubeconfig: str | None, vm: str | None, *, deadline_s: float
) -> dict[str, Any] | None:
    """One Migration through the API, create -> Succeeded; None when the reconciler never
    takes it past Pending/NotImplemented within ``deadline_s`` (or no cluster was given)."""
    if not kubeconfig or not vm:
        return None
    name = f"bench-{int(time.time() * 1000)}"
    body = {
        "apiVersion": f"{kinds.MIGRATION.group}/{kinds.MIGRATION.version}",
        "kind": kinds.MIGRATION.kind,
        "metadata": {"name": name},
        "spec": {"vmName": vm},
    }
    kubectl = ["kubectl", f"--kubeconfig={kubeconfig}"]
    started = time.perf_counter()
    subprocess.run([*kubectl, "create", "-f", "-"], input=json.dumps(body), text=True, check=True,
                   capture_output=True)  # fmt: skip
    end = started + deadline_s
    while time.perf_counter() < end:
        out = subprocess.run([*kubectl, "get", kinds.MIGRATION.plural, name, "-o", "json"],
                             capture_output=True, text=True, check=False).stdout  # fmt: skip
        status = (json.loads(out or "{}").get("status") or {}) if out else {}
        phase = status.get("phase")
        if phase in ("Succeeded", "Failed"):
            return {
                "wall_ms": (time.perf_counter() - started) * 1000,
                "total_ms": status.get("totalTimeMs"),
                "downtime_ms": status.get("downtimeMs"),
                "bytes": status.get("bytesTransferred"),
                "succeeded": phase == "Succeeded",
            }
        time.sleep(0.2)
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sizes", default="256,1024", help="guest MiB, comma-separated")
    p.add_argument("--loads", default="idle,dirty")
    p.add_argument("--kubeconfig", help="dev cluster for our path")
    p.add_argument("--vm", help="running VM for our path")
    p.add_argument("--ours-deadline", type=float, default=60.0)
    args = p.parse_args(argv)
    image = guest.ensure_tiny_image()
    results: list[dict[str, Any]] = []
    wrong = False
    node1, node2 = nodes.create_cluster_nodes(CLUSTER, 2)
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            for load in args.loads.split(","):
                case = f"{load}-{size}"
                dom = f"mb-{load}-{size}"
                disk = node1.shared_dir / f"{dom}.qcow2"
                console = node1.shared_dir / f"{dom}.console.log"
                guest.create_linked_disk(disk, base=image.base_disk)
                script = DIRTIER if load == "dirty" else IDLE
                xml = guest.tiny_domain_xml(
                    dom,
                    image=image,
                    disk=disk,
                    console_log=console,
                    memory_mib=size,
                    cmdline=guest.kernel_cmdline(script=script),
                )
                xml_path = node1.shared_dir / f"{dom}.xml"
                xml_path.write_text(xml)
                virsh(node1.libvirt_uri, "define", str(xml_path))
                virsh(node1.libvirt_uri, "start", dom)
                marker = f"kv-{load}-start"
                deadline = time.monotonic() + BOOT_DEADLINE_S
                while marker not in (
                    console.read_text(errors="replace") if console.exists() else ""
                ):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{dom}: no {marker} on the console")
                    time.sleep(0.5)
                rounds: list[dict[str, float]] = []
                here, there = node1, node2
                for i in range(args.rounds):
                    try:
                        r = raw_round(here, there, dom)
                    except (subprocess.CalledProcessError, RuntimeError) as exc:
                        log(f"{case} raw round {i}: WRONG: {getattr(exc, 'stderr', '') or exc}")
                        wrong = True
                        break
                    log(f"{case} raw round {i}: {r}")
                    rounds.append(r)
                    here, there = there, here
                raw = summarise(rounds)
                ours = ours_round(args.kubeconfig, args.vm, deadline_s=args.ours_deadline)
                if ours is None:
                    log(f"{case}: {NOT_AVAILABLE}")
                results.append({"case": case, "rounds": len(rounds), "raw": raw, "ours": ours,
                                "targets": targets(case, raw, ours)})  # fmt: skip
                subprocess.run(
                    ["virsh", "-c", here.libvirt_uri, "destroy", dom],
                    capture_output=True,
                    check=False,
                )
                subprocess.run(
                    ["virsh", "-c", here.libvirt_uri, "undefine", dom],
                    capture_output=True,
                    check=False,
                )
    finally:
        nodes.destroy_cluster_nodes(CLUSTER)
    print(table(results))
    print(
        json.dumps(
            {
                "bench": "migration",
                "results": results,
                "targets": {"ratio_idle_256": TARGET_RATIO, "downtime_ms": TARGET_DOWNTIME_MS},
            }
        )
    )
    return 1 if wrong else 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("bench/migration.py needs root (simulated nodes)")
    sys.exit(main())
