"""Disk I/O inside a guest on each backend — local qcow2, NFS (QEMU's own client to a
real nfs-ganesha), iSCSI (QEMU's own client to a real tgt LUN) — against the same
operations on a file of the host in the same run, as ratios (issue 15).

One simulated node (``devenv.cluster``: control plane, controller, agent), the NAS
(``devenv.nas``) and the SAN (``devenv.san``) on its fabric. For each backend a tiny TCG
guest boots with a data disk there and runs, on the raw device, with busybox's ``dd``:
sequential write (``--mib`` MiB in 1 MiB blocks, O_DIRECT, fsync), sequential read
(O_DIRECT), and ``--random`` single 4 KiB O_DIRECT writes at random offsets; it times each
from ``/proc/uptime`` (10 ms resolution) and prints the figures on its console. The
baseline runs the same ``dd`` commands, same sizes and flags, on a file in the node's
state directory on the host. Ratios are guest throughput ÷ host throughput (1.0 = as
fast as the host's own file). On this machine the guest is emulated (TCG): each of its
``dd`` processes costs far more CPU than the host's, which the random-write figure shows
most. Prints a table and one JSON line. Exits non-zero when a guest does not report.

Run as root from the repo root: ``.venv/bin/python bench/storage.py [--mib 128]
[--random 1000]``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

import _harness as h
from kubevisor.devenv import cluster, guest
from kubevisor.devenv import nas as devnas
from kubevisor.devenv import san as devsan

CLUSTER = "kvstob"
BOOT_DEADLINE_S = 240.0
RUN_DEADLINE_S = 900.0
MARK = "kubevisor-bench:"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def workload(dev: str, mib: int, randoms: int) -> str:
    """The guest's (and the host's) commands on ``dev``: prints ``<MARK> <op> <cs>`` per
    operation, centiseconds from /proc/uptime."""
    blocks = max(1, (mib << 20) // 4096)
    return (
        "now() { cut -d' ' -f1 /proc/uptime | tr -d .; }; "
        "dd if=/dev/urandom of=/tmp/r bs=1M count=1 2>/dev/null; "
        f"t=$(now); i=0; while [ $i -lt {mib} ]; do "
        f"dd if=/tmp/r of={dev} bs=1M count=1 seek=$i oflag=direct conv=notrunc 2>/dev/null; "
        f'i=$((i+1)); done; sync; echo "{MARK} seqwrite $(( $(now) - t ))" >/dev/console; '
        f"t=$(now); dd if={dev} of=/dev/null bs=1M count={mib} iflag=direct 2>/dev/null; "
        f'echo "{MARK} seqread $(( $(now) - t ))" >/dev/console; '
        f"t=$(now); i=0; while [ $i -lt {randoms} ]; do "
        f"dd if=/tmp/r of={dev} bs=4k count=1 seek=$((RANDOM % {blocks})) oflag=direct "
        "conv=notrunc 2>/dev/null; i=$((i+1)); done; "
        f'echo "{MARK} randwrite $(( $(now) - t ))" >/dev/console'
    )


def parse(text: str) -> dict[str, float]:
    """op -> seconds from the ``<MARK> op cs`` lines."""
    return {op: int(cs) / 100 for op, cs in re.findall(re.escape(MARK) + r" (\w+) (\d+)", text)}


def host_baseline(path: Path, mib: int, randoms: int) -> dict[str, float]:
    """The same commands on a host file (``/dev/console`` replaced by stdout)."""
    with open(path, "wb") as f:
        f.truncate(mib << 20)
    script = workload(str(path), mib, randoms).replace(">/dev/console", "")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return parse(out.stdout)


def run_guest(dev: cluster.DevCluster, name: str, disk: dict[str, Any], device: str,
              mib: int, randoms: int) -> dict[str, float]:  # fmt: skip
    image = guest.ensure_tiny_image()
    body = {
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "runStrategy": "Always",
            "memory": "256Mi",
            "disks": [{"name": "root", "image": "tiny", "clone": "linked"}, disk],
            "boot": {"kernel": str(image.kernel), "initrd": str(image.initrd),
                     "cmdline": guest.kernel_cmdline(script=workload(device, mib, randoms))},
            "display": {"vnc": False},
        },
    }  # fmt: skip
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))

    def status() -> dict[str, Any]:
        out = dev.run_kubectl("get", "virtualmachine", name, "-o", "json")
        return dict(json.loads(out).get("status") or {})

    st = h.wait_for(f"{name} Running", lambda: (s := status()).get("phase") == "Running" and s,
                    timeout=BOOT_DEADLINE_S)  # fmt: skip
    console = Path(st["consoleLog"])
    text = h.wait_for(
        f"{name} reports its I/O",
        lambda: (t := console.read_text(errors="replace") if console.exists() else "")
        and f"{MARK} randwrite" in t and t,
        timeout=RUN_DEADLINE_S, every=1.0,
    )  # fmt: skip
    dev.run_kubectl("delete", "virtualmachine", name, "--wait=true", "--timeout=120s")
    return parse(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=128)
    p.add_argument("--random", type=int, default=1000)
    args = p.parse_args(argv)
    guest.ensure_tiny_image()
    dev = cluster.up(CLUSTER, nodes_count=1)
    results: dict[str, dict[str, float]] = {}
    wrong = False
    nas = san = None
    try:
        nas = devnas.start(CLUSTER, dev.base_dir / CLUSTER / "nas")
        san = devsan.start(CLUSTER, dev.base_dir / CLUSTER / "san",
                           lun_bytes=(args.mib + 8) << 20)  # fmt: skip
        dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([
            {"apiVersion": "kubevisor.io/v1alpha1", "kind": "StorageBackend",
             "metadata": {"name": "bench-nfs"},
             "spec": {"type": "nfs", "nfs": {"server": nas.address, "export": str(nas.export)}}},
            {"apiVersion": "kubevisor.io/v1alpha1", "kind": "StorageBackend",
             "metadata": {"name": "bench-iscsi"},
             "spec": {"type": "iscsi", "iscsi": {"portal": san.address, "iqn": san.iqn}}},
        ]))  # fmt: skip
        size = f"{args.mib + 8}Mi"
        cases = (
            ("local", {"name": "data", "size": size}, "/dev/vdb"),
            ("nfs", {"name": "data", "size": size, "backend": "bench-nfs"}, "/dev/vdb"),
            ("iscsi", {"name": "data", "bus": "scsi", "backend": "bench-iscsi"}, "/dev/sda"),
        )
        base = dev.nodes[0].state_dir / "bench-host.img"
        results["host"] = host_baseline(base, args.mib, args.random)
        base.unlink(missing_ok=True)
        log(f"host file: {results['host']}")
        for label, disk, device in cases:
            started = time.monotonic()
            results[label] = run_guest(dev, f"io-{label}", disk, device, args.mib, args.random)
            log(f"{label}: {results[label]} ({time.monotonic() - started:.0f} s in all)")
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
        log(f"WRONG: {getattr(exc, 'stderr', '') or exc}")
        wrong = True
    finally:
        if san is not None:
            devsan.stop(san)
        if nas is not None:
            devnas.stop(nas)
        cluster.down(CLUSTER)
    host = results.get("host", {})

    def rate(r: dict[str, float], op: str) -> float:
        amount = args.random if op == "randwrite" else args.mib
        return amount / r[op] if r.get(op) else 0.0

    lines = [f"{'where':<8}{'seq write MiB/s':>17}{'seq read MiB/s':>16}{'rand 4k IOPS':>14}"
             f"{'ratios to host (w / r / rand)':>32}"]  # fmt: skip
    summary: dict[str, Any] = {"bench": "storage", "mib": args.mib, "random": args.random}
    for label, r in results.items():
        rates = [rate(r, op) for op in ("seqwrite", "seqread", "randwrite")]
        ratios = [
            x / rate(host, op) if rate(host, op) else 0.0
            for x, op in zip(rates, ("seqwrite", "seqread", "randwrite"), strict=True)
        ]
        lines.append(f"{label:<8}{rates[0]:>17.1f}{rates[1]:>16.1f}{rates[2]:>14.1f}"
                     f"{' / '.join(f'{x:.3f}' for x in ratios):>32}")  # fmt: skip
        summary[label] = {"seconds": r, "rates": rates, "ratios_to_host": ratios}
    print("\n".join(lines))
    print(json.dumps(summary))
    return 1 if wrong or len(results) < 4 else 0


if __name__ == "__main__":
    sys.exit(main())
