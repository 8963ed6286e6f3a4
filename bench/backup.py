"""Backups: a live full VMBackup against a plain ``qemu-img convert`` of the same disks in
the same run, and incremental size/time after a known amount of writes (issue 11).

One simulated node (``devenv.cluster``: control plane, controller, agent) runs a tiny TCG
guest with a root overlay and a data disk filled with random data (``--data-mib``, so
neither side can skip zero clusters). Rounds alternate: the baseline converts the VM's
disk files (``qemu-img convert -U -O qcow2``, what a copy of the files costs, the guest
running) into the shared directory; ours is a Full VMBackup of the running VM, create ->
Succeeded, its own ``status.durationMs`` and the wall time. Then, for each write size in
``--writes-mib``, QEMU writes that many MiB into the running guest's data disk (HMP
``qemu-io``: through the guest's block layer, so the dirty bitmap sees it) and an
Incremental VMBackup copies what changed: its file sizes and time are what the issue's
"cost proportional to the data changed" is about. The guest-visible pause: the guest
prints a tick every second; a host thread notes when each tick line reaches the console
log (every 10 ms), and the longest gap between two ticks during a live full backup, less
the longest gap over an idle window of the same length in the same run, is the pause the
guest saw. The agent's own timings (copy = libvirt's job plus set-up, checksum, commit)
come from its log line. Prints a table and one JSON line;
the target (live full >= 0.8x convert throughput) is reported, never asserted. Exits
non-zero when a result is wrong (a backup failed).

Run as root from the repo root: ``.venv/bin/python bench/backup.py [--rounds 2]
[--data-mib 256] [--writes-mib 8,32]``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

import _harness as h
from kubevisor.api import groups, kinds
from kubevisor.devenv import cluster, guest

CLUSTER = "kvbackupb"
NAMESPACE = "default"
VM = "bb-src"
BOOT_DEADLINE_S = 240.0
BACKUP_DEADLINE_S = 600.0
TARGET_RATIO = 0.8
REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


TICK = re.compile(r"kubevisor-guest: tick (\d+)\s*$", re.M)
TIMINGS = re.compile(r"(\w+)=(\d+)ms")


def max_gap_ms(arrivals: list[float]) -> float | None:
    """The longest interval between consecutive tick arrivals (host seconds -> ms; pure)."""
    if len(arrivals) < 2:
        return None
    return max(b - a for a, b in itertools.pairwise(arrivals)) * 1000


def agent_timings(text: str, name: str) -> dict[str, float]:
    """``copy``/``checksum``/``commit``/``job`` ms of backup ``name`` from the agent's log
    lines (pure)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if f"/{name}: " in line and "timings" in line:
            out.update({k: float(v) for k, v in TIMINGS.findall(line.split("timings", 1)[1])})
    return out


class TickWatcher:
    """Notes the host time each new guest tick line appears in the console log."""

    def __init__(self, console: Path) -> None:
        self.console = console
        self.arrivals: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seen = 0
        while not self._stop.is_set():
            ticks = [int(t) for t in TICK.findall(self.console.read_text(errors="replace"))]
            if ticks and ticks[-1] > seen:
                if seen:
                    self.arrivals.append(time.monotonic())
                seen = ticks[-1]
            time.sleep(0.01)

    def __enter__(self) -> TickWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        time.sleep(1.5)  # the tick after the window shows a pause at its end
        self._stop.set()
        self._thread.join()


class Bench:
    def __init__(self, dev: cluster.DevCluster) -> None:
        import kubernetes

        self.dev = dev
        self.objs = kubernetes.client.CustomObjectsApi(h.api_client(dev.kubeconfig))
        self.shared = dev.nodes[0].shared_dir

    def create(self, plural: str, body: dict[str, Any]) -> None:
        self.objs.create_namespaced_custom_object(
            groups.GROUP, groups.VERSION, NAMESPACE, plural, body
        )

    def get(self, plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.objs.get_namespaced_custom_object(
            groups.GROUP, groups.VERSION, NAMESPACE, plural, name
        )
        return obj

    def boot(self, data_image: Path, data_mib: int) -> None:
        template = yaml.safe_load((REPO / "docs/examples/vmtemplate.yaml").read_text())
        self.create(kinds.VMTEMPLATE.plural, template)
        boot = {k: v for k, v in template["spec"]["boot"].items() if k != "cmdline"}
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": kinds.VIRTUALMACHINE.kind,
            "metadata": {"name": VM, "namespace": NAMESPACE},
            "spec": {
                "runStrategy": "Always",
                "templateRef": {"name": "tiny"},
                "boot": {**boot, "cmdline": guest.kernel_cmdline(script=guest.TICKER_SCRIPT)},
                "disks": [
                    {"name": "root", "image": "tiny", "size": "1Gi", "clone": "linked",
                     "storage": "shared"},
                    {"name": "data", "image": str(data_image), "size": f"{data_mib}Mi",
                     "clone": "full", "storage": "shared"},
                ],
            },
        }  # fmt: skip
        self.create(kinds.VIRTUALMACHINE.plural, body)

        def running() -> bool:
            st = self.get(kinds.VIRTUALMACHINE.plural, VM).get("status") or {}
            return st.get("phase") == "Running"

        h.wait_for(f"{VM} Running", running, timeout=BOOT_DEADLINE_S)
        self.console = Path(self.get(kinds.VIRTUALMACHINE.plural, VM)["status"]["consoleLog"])
        h.wait_for("guest ticking", lambda: len(TICK.findall(self.console.read_text(
            errors="replace"))) >= 3, timeout=BOOT_DEADLINE_S)  # fmt: skip

    def disk_files(self) -> list[Path]:
        return [self.shared / "disks" / NAMESPACE / VM / f"{d}.qcow2" for d in ("root", "data")]

    def convert(self, i: int) -> dict[str, float]:
        out = self.shared / "bench-convert" / str(i)
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        for src in self.disk_files():
            subprocess.run(["qemu-img", "convert", "-U", "-O", "qcow2", str(src),
                            str(out / src.name)], check=True, capture_output=True)  # fmt: skip
        wall = (time.perf_counter() - started) * 1000
        size = sum(f.stat().st_size for f in out.iterdir())
        shutil.rmtree(out)
        return {"ms": wall, "bytes": float(size)}

    def backup(self, name: str, mode: str) -> dict[str, float]:
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": kinds.VMBACKUP.kind,
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"vmName": VM, "mode": mode, "target": {"path": "bench"}},
        }
        started = time.perf_counter()
        self.create(kinds.VMBACKUP.plural, body)

        def final() -> dict[str, Any] | None:
            st = self.get(kinds.VMBACKUP.plural, name).get("status") or {}
            return st if st.get("phase") in ("Succeeded", "Failed") else None

        st = h.wait_for(f"VMBackup {name}", final, timeout=BACKUP_DEADLINE_S, every=0.05)
        wall = (time.perf_counter() - started) * 1000
        if st["phase"] != "Succeeded":
            raise RuntimeError(f"{name} Failed: {st.get('conditions')}")
        timings = agent_timings(self.dev.log(f"agent-{self.dev.nodes[0].name}").read_text(), name)
        return {"ms": float(st["durationMs"]), "wall_ms": wall, "bytes": float(st["sizeBytes"]),
                **{f"{k}_ms": v for k, v in timings.items()}}  # fmt: skip

    def pause(self, name: str) -> dict[str, float | None]:
        """The longest tick gap during a live full backup and over an idle window as
        long (the baseline, same run)."""
        with TickWatcher(self.console) as during:
            started = time.monotonic()
            self.backup(name, "Full")
            took = time.monotonic() - started
        with TickWatcher(self.console) as idle:
            time.sleep(max(took, 3.0))
        gap, base = max_gap_ms(during.arrivals), max_gap_ms(idle.arrivals)
        pause = None if gap is None or base is None else max(gap - base, 0.0)
        return {"gap_ms": gap, "idle_gap_ms": base, "pause_ms": pause}

    def convert_checked(self, i: int) -> dict[str, float]:
        """The baseline plus what a backup also does before it says Succeeded: fsync the
        copies and compute their SHA-256."""
        out = self.shared / "bench-convert" / f"c{i}"
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        for src in self.disk_files():
            dst = out / src.name
            subprocess.run(["qemu-img", "convert", "-U", "-O", "qcow2", str(src), str(dst)],
                           check=True, capture_output=True)  # fmt: skip
            with dst.open("rb") as f:
                os.fsync(f.fileno())
                digest = hashlib.sha256()
                while chunk := f.read(4 << 20):
                    digest.update(chunk)
        wall = (time.perf_counter() - started) * 1000
        size = sum(f.stat().st_size for f in out.iterdir())
        shutil.rmtree(out)
        return {"ms": wall, "bytes": float(size)}

    def _monitor(self, cmd: str, *, hmp: bool) -> str:
        uri = self.dev.nodes[0].libvirt_uri
        argv = ["virsh", "-c", uri, "qemu-monitor-command", f"{NAMESPACE}_{VM}", cmd]
        if hmp:
            argv.insert(-1, "--hmp")
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    def guest_write(self, mib: int, offset_mib: int) -> None:
        """Write ``mib`` MiB into the running guest's data disk through QEMU's block layer
        (HMP ``qemu-io -d <the disk's qdev>``: the guest device's own BlockBackend, so the
        dirty bitmaps see it), then read back with a pattern check. The incremental's size
        shows it landed."""
        blocks = json.loads(self._monitor('{"execute":"query-block"}', hmp=False))["return"]
        qdev = next(
            b["qdev"] for b in blocks if "data.qcow2" in (b.get("inserted") or {}).get("file", "")
        )
        span = f"{offset_mib}M {mib}M"
        wrote = self._monitor(f'qemu-io -d {qdev} "write -P 0x5a {span}"', hmp=True)
        read = self._monitor(f'qemu-io -d {qdev} "read -P 0x5a {span}"', hmp=True)
        # HMP prints nothing on success (QEMU 7.2); a failure or pattern mismatch says so
        said = (wrote + read).lower()
        if any(word in said for word in ("fail", "error", "conflict", "not found")):
            raise RuntimeError(f"qemu-io on {qdev}: {wrote.strip()} / {read.strip()}")
        log(f"guest data disk: {mib} MiB written at {offset_mib} MiB through {qdev}")


def med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--data-mib", type=int, default=256)
    p.add_argument("--writes-mib", default="8,32")
    args = p.parse_args(argv)
    guest.ensure_tiny_image()
    wrong = False
    dev = cluster.up(CLUSTER, nodes_count=1)
    full: list[dict[str, float]] = []
    conv: list[dict[str, float]] = []
    checked: list[dict[str, float]] = []
    incs: list[dict[str, Any]] = []
    pauses: list[dict[str, float | None]] = []
    try:
        b = Bench(dev)
        image = dev.nodes[0].shared_dir / "bench-data.raw"
        with image.open("wb") as f:
            for _ in range(args.data_mib):
                f.write(os.urandom(1 << 20))
        b.boot(image, args.data_mib)
        for i in range(args.rounds):
            conv.append(b.convert(i))
            log(f"round {i} convert: {conv[-1]}")
            checked.append(b.convert_checked(i))
            log(f"round {i} convert+fsync+sha256: {checked[-1]}")
            full.append(b.backup(f"bb-full-{i}", "Full"))
            log(f"round {i} live full: {full[-1]}")
        for i in range(args.rounds):
            pauses.append(b.pause(f"bb-pause-{i}"))
            log(f"round {i} guest ticks: {pauses[-1]}")
        offset = 0
        for n, mib in enumerate(int(w) for w in args.writes_mib.split(",")):
            b.guest_write(mib, offset)
            offset += mib
            r = b.backup(f"bb-inc-{n}", "Incremental")
            log(f"incremental after {mib} MiB written: {r}")
            incs.append({"written_mib": mib, **r})
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
        log(f"WRONG: {getattr(exc, 'stderr', '') or exc}")
        wrong = True
    finally:
        cluster.down(CLUSTER)
    result: dict[str, Any] = {"bench": "backup", "data_mib": args.data_mib}
    lines = [f"{'case':<36}{'time ms':>10}{'MiB written':>13}{'MiB/s':>9}"]
    if full and conv:
        total = med(conv, "bytes")
        tput_conv = total / med(conv, "ms") / 1000
        tput_full = med(full, "bytes") / med(full, "ms") / 1000
        ratio = med(conv, "ms") / med(full, "ms")
        rows_by_label = (
            ("qemu-img convert (baseline)", conv),
            ("convert + fsync + sha256", checked),
            ("live full VMBackup", full),
        )
        for label, rows in rows_by_label:
            mib = med(rows, "bytes") / 2**20
            lines.append(f"{label:<36}{med(rows, 'ms'):>10.0f}{mib:>13.1f}"
                         f"{mib / med(rows, 'ms') * 1000:>9.1f}")  # fmt: skip
        lines.append(f"{'live full wall (create->Succeeded)':<36}{med(full, 'wall_ms'):>10.0f}")
        ratio_checked = med(checked, "ms") / med(full, "ms")
        lines.append(f"ratio convert/backup time: {ratio:.2f} (target >= {TARGET_RATIO}: "
                     f"{'met' if ratio >= TARGET_RATIO else 'not met'}); against convert +"
                     f" fsync + sha256: {ratio_checked:.2f}")  # fmt: skip
        result.update(
            convert={"ms": med(conv, "ms"), "bytes": total, "bytes_per_ms": tput_conv},
            full={"ms": med(full, "ms"), "wall_ms": med(full, "wall_ms"),
                  "bytes": med(full, "bytes"), "bytes_per_ms": tput_full},
            convert_checked={"ms": med(checked, "ms"), "bytes": med(checked, "bytes")},
            ratio=ratio, ratio_checked=ratio_checked, target_ratio=TARGET_RATIO,
            rounds=len(full),
        )  # fmt: skip
    if full and all(f"{k}_ms" in full[0] for k in ("job", "copy", "checksum", "commit")):
        parts = {k: med(full, f"{k}_ms") for k in ("job", "copy", "checksum", "commit")}
        lines.append("live full, agent timings (median ms): " + ", ".join(
            f"{k} {v:.0f}" for k, v in parts.items()))  # fmt: skip
        result["full_timings_ms"] = parts
    gaps = [p for p in pauses if p["pause_ms"] is not None]
    if gaps:
        worst = max(float(p["pause_ms"] or 0) for p in gaps)
        during = max(float(p["gap_ms"] or 0) for p in gaps)
        idle = max(float(p["idle_gap_ms"] or 0) for p in gaps)
        lines.append(f"guest tick gap during live full: max {during:.0f} ms vs idle {idle:.0f}"
                     f" ms -> guest-visible pause <= {worst:.0f} ms")  # fmt: skip
        result["pause"] = {"rounds": gaps, "max_pause_ms": worst}
    for r in incs:
        label = f"incremental after {r['written_mib']} MiB"
        lines.append(f"{label:<36}{r['ms']:>10.0f}{r['bytes'] / 2**20:>13.1f}")
    result["incrementals"] = incs
    print("\n".join(lines))
    print(json.dumps(result))
    return 1 if wrong or not full else 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("bench/backup.py needs root (a dev cluster)")
    sys.exit(main())
