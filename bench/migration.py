"""Live migration: raw ``virsh migrate --live --p2p`` against our Migration (issue 8).

Same VMs, same run, several rounds: a tiny TCG guest (256 MiB and 1 GiB, idle and dirtying
memory) moves between two simulated nodes, first with raw virsh between the two libvirtds
(downtime and bytes from ``virsh domjobinfo --completed``), then through a Migration object
(create -> ``Succeeded``, figures from ``status.totalTimeMs/downtimeMs/bytesTransferred``).
Prints a table and one JSON line; targets are reported (target-met column), never asserted.
Exits non-zero when a result is wrong (a raw migration failed, or the guest did not end up
running on the target only).

Both paths run on one dev cluster (``devenv.cluster``: control plane, controller, one agent
per simulated node): the raw domains are not kubevisor's (no ``_`` in their names), so the
agents leave them alone. Our VMs are the tiny template with the case's memory and load
script; each round is a Migration to the other node (``targetNode``), and the round checks
that the guest then runs on the target only and that ``status.nodeName`` moved.
``--raw-only`` skips our path (it then prints "ours: not available (...)").

Run as root from the repo root: ``.venv/bin/python bench/migration.py [--rounds 3]
[--sizes 256,1024] [--loads idle,dirty] [--raw-only]``.
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
from pathlib import Path
from typing import Any

import yaml

import _harness as h
from kubevisor.api import groups, kinds
from kubevisor.devenv import cluster, guest, nodes

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
NOT_AVAILABLE = "ours: not available (--raw-only)"
NAMESPACE = "default"
REPO = Path(__file__).resolve().parent.parent


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


def vm_body(name: str, *, memory_mib: int, script: str, boot: dict[str, Any]) -> dict[str, Any]:
    """The VirtualMachine of one case: the tiny template with the case's memory and the
    load script on the kernel command line (pure)."""
    return {
        "apiVersion": groups.API_VERSION,
        "kind": kinds.VIRTUALMACHINE.kind,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "runStrategy": "Always",
            "templateRef": {"name": "tiny"},
            "memory": f"{memory_mib}Mi",
            "boot": {**boot, "cmdline": guest.kernel_cmdline(script=script)},
        },
    }


def migration_body(name: str, vm: str, target: str) -> dict[str, Any]:
    """A Migration of ``vm`` to ``target`` with the default policy (pure)."""
    return {
        "apiVersion": groups.API_VERSION,
        "kind": kinds.MIGRATION.kind,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"vmName": vm, "targetNode": target},
    }


class Ours:
    """Our path: a dev cluster (control plane, controller, one agent per simulated node)."""

    def __init__(self, dev: cluster.DevCluster) -> None:
        self.dev = dev
        self.api = h.api_client(dev.kubeconfig)
        import kubernetes

        self.objs = kubernetes.client.CustomObjectsApi(self.api)
        template = yaml.safe_load((REPO / "docs/examples/vmtemplate.yaml").read_text())
        self.boot = {k: v for k, v in template["spec"]["boot"].items() if k != "cmdline"}
        self._create(kinds.VMTEMPLATE.plural, template)

    def _create(self, plural: str, body: dict[str, Any]) -> None:
        group, version = groups.GROUP, groups.VERSION
        self.objs.create_namespaced_custom_object(group, version, NAMESPACE, plural, body)

    def _get(self, plural: str, name: str) -> dict[str, Any]:
        group, version = groups.GROUP, groups.VERSION
        obj: dict[str, Any] = self.objs.get_namespaced_custom_object(
            group, version, NAMESPACE, plural, name
        )
        return obj

    def boot_vm(self, name: str, *, memory_mib: int, script: str, marker: str) -> str:
        """Create the VM, wait until it runs and its load script started; its node."""
        self._create(
            kinds.VIRTUALMACHINE.plural,
            vm_body(name, memory_mib=memory_mib, script=script, boot=self.boot),
        )

        def started() -> str | None:
            st = self._get(kinds.VIRTUALMACHINE.plural, name).get("status") or {}
            log_path = st.get("consoleLog")
            if st.get("phase") != "Running" or not log_path:
                return None
            text = Path(log_path).read_text(errors="replace") if Path(log_path).exists() else ""
            return str(st.get("nodeName")) if marker in text else None

        node: str = h.wait_for(f"{name} running its load", started, timeout=BOOT_DEADLINE_S)
        return node

    def round(self, vm: str, source: str, target: str, *, deadline_s: float) -> dict[str, Any]:
        """One Migration create -> Succeeded/Failed; checks the VM runs on ``target`` only."""
        name = f"{vm}-{int(time.time() * 1000)}"
        started = time.perf_counter()
        self._create(kinds.MIGRATION.plural, migration_body(name, vm, target))

        def final() -> dict[str, Any] | None:
            st = self._get(kinds.MIGRATION.plural, name).get("status") or {}
            return st if st.get("phase") in ("Succeeded", "Failed", "Cancelled") else None

        status = h.wait_for(f"Migration {name} to end", final, timeout=deadline_s, every=0.05)
        wall = (time.perf_counter() - started) * 1000
        out: dict[str, Any] = {"wall_ms": wall, "succeeded": status["phase"] == "Succeeded"}
        for key, field in (("total_ms", "totalTimeMs"), ("downtime_ms", "downtimeMs"),
                           ("bytes", "bytesTransferred")):  # fmt: skip
            if status.get(field) is not None:
                out[key] = float(status[field])
        if not out["succeeded"]:
            reasons = [c.get("message") for c in status.get("conditions") or []]
            raise RuntimeError(f"{name} ended {status['phase']}: {reasons}")
        by_name = {n.name: n for n in self.dev.nodes}
        dom = f"{NAMESPACE}_{vm}"
        src_state = virsh_state(by_name[source].libvirt_uri, dom)
        if virsh_state(by_name[target].libvirt_uri, dom) != "running" or src_state == "running":
            raise RuntimeError(f"{dom} not running on {target} only (source: {src_state})")

        def moved() -> bool:
            st = self._get(kinds.VIRTUALMACHINE.plural, vm).get("status") or {}
            return st.get("nodeName") == target

        h.wait_for(f"{vm} status.nodeName = {target}", moved, timeout=30.0)
        return out

    def delete_vm(self, name: str) -> None:
        group, version = groups.GROUP, groups.VERSION
        self.objs.delete_namespaced_custom_object(
            group, version, NAMESPACE, kinds.VIRTUALMACHINE.plural, name
        )

        def gone() -> bool:
            import kubernetes

            try:
                self._get(kinds.VIRTUALMACHINE.plural, name)
            except kubernetes.client.exceptions.ApiException as exc:
                if exc.status == 404:
                    return True
                raise
            return False

        h.wait_for(f"{name} deleted", gone, timeout=120.0)


def virsh_state(uri: str, dom: str) -> str | None:
    """The domain's state on one libvirtd, None when it is not defined there."""
    done = subprocess.run(["virsh", "-c", uri, "domstate", dom], capture_output=True, text=True,
                          check=False)  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else None


def boot_raw(node: nodes.SimNode, dom: str, *, size: int, script: str, marker: str) -> None:
    """Define and start the raw baseline's domain on ``node``; wait for its load script."""
    image = guest.ensure_tiny_image()
    disk = node.shared_dir / f"{dom}.qcow2"
    console = node.shared_dir / f"{dom}.console.log"
    guest.create_linked_disk(disk, base=image.base_disk)
    xml = guest.tiny_domain_xml(
        dom,
        image=image,
        disk=disk,
        console_log=console,
        memory_mib=size,
        cmdline=guest.kernel_cmdline(script=script),
    )
    xml_path = node.shared_dir / f"{dom}.xml"
    xml_path.write_text(xml)
    virsh(node.libvirt_uri, "define", str(xml_path))
    virsh(node.libvirt_uri, "start", dom)
    h.wait_for(
        f"{marker} on {dom}'s console",
        lambda: console.exists() and marker in console.read_text(errors="replace"),
        timeout=BOOT_DEADLINE_S,
        every=0.5,
    )


def remove_raw(node: nodes.SimNode, dom: str) -> None:
    for verb in ("destroy", "undefine"):
        subprocess.run(["virsh", "-c", node.libvirt_uri, verb, dom], capture_output=True,
                       check=False)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sizes", default="256,1024", help="guest MiB, comma-separated")
    p.add_argument("--loads", default="idle,dirty")
    p.add_argument("--raw-only", action="store_true", help="skip our path (no controller)")
    p.add_argument("--ours-deadline", type=float, default=600.0)
    args = p.parse_args(argv)
    guest.ensure_tiny_image()
    results: list[dict[str, Any]] = []
    wrong = False
    dev = cluster.up(CLUSTER, nodes_count=2)
    try:
        node1, node2 = dev.nodes[0], dev.nodes[1]
        ours_path = None if args.raw_only else Ours(dev)
        for size in (int(s) for s in args.sizes.split(",")):
            for load in args.loads.split(","):
                case = f"{load}-{size}"
                script = DIRTIER if load == "dirty" else IDLE
                marker = f"kv-{load}-start"
                dom = f"mb-{load}-{size}"
                boot_raw(node1, dom, size=size, script=script, marker=marker)
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
                remove_raw(here, dom)
                raw = summarise(rounds)
                ours: dict[str, Any] | None = None
                if ours_path is not None:
                    vm = f"mbo-{load}-{size}"
                    source = ours_path.boot_vm(vm, memory_mib=size, script=script, marker=marker)
                    names = [n.name for n in dev.nodes]
                    ours_rounds: list[dict[str, Any]] = []
                    for i in range(args.rounds):
                        target = names[1] if source == names[0] else names[0]
                        try:
                            r2 = ours_path.round(vm, source, target, deadline_s=args.ours_deadline)
                        except (RuntimeError, TimeoutError) as exc:
                            log(f"{case} ours round {i}: WRONG: {exc}")
                            wrong = True
                            break
                        log(f"{case} ours round {i}: {r2}")
                        ours_rounds.append(r2)
                        source = target
                    ours_path.delete_vm(vm)
                    if ours_rounds:
                        ours = {**summarise(ours_rounds),
                                "succeeded": all(r["succeeded"] for r in ours_rounds)}  # fmt: skip
                if ours is None:
                    log(f"{case}: {NOT_AVAILABLE}")
                results.append({"case": case, "rounds": len(rounds), "raw": raw, "ours": ours,
                                "targets": targets(case, raw, ours)})  # fmt: skip
    finally:
        cluster.down(CLUSTER)
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
