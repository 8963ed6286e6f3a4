"""Benchmark (issue 10, controller part): provisioning a DesktopPool from zero to Ready on
libvirt's test driver, against the same number of plain VirtualMachines in the same run.

One fresh control plane, the controller and ``--nodes`` agents, each on its own
``test:///default`` libvirt (a real driver with a fake hypervisor; VMs have no disks, so
"linked clones" are not exercised here, only the control path).

- baseline: ``--desktops`` plain VirtualMachines from the same template, created at once
  (``--concurrency`` client threads, like one ``kubectl apply``); time until all are
  Running (a watch records each VM's first Running).
- pool: one DesktopPool ``min = max = --desktops``, ``spare = 0``; time from its create
  until ``status.ready`` equals the count and ``phase`` is Ready; per desktop, create of
  the pool -> the desktop's VM seen Running.

With ``--qemu N`` the same two measurements run on a dev cluster of ``--qemu-nodes``
simulated nodes with real TCG tiny guests (128Mi, root disk a linked clone of the tiny
image): "Running" is the agent's report that libvirt runs the domain, not a booted guest.

Before both sets one plain VM is started and deleted (``warm_up_s``), so the set that
runs first does not pay the node's first start alone.

Rate = desktops / time to all Running. The claim -> first frame part of issue 10 needs the
display gateway and is not measured here. Prints a table and ONE JSON line; never asserts
a time (target reported, not enforced: >= 2 desktops/s on the test driver).

Run as root from the repo root:
    .venv/bin/python bench/desktop.py [--desktops 20] [--nodes 2] [--concurrency 10]
        [--qemu 8] [--qemu-nodes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
from kubevisor.api import groups, kinds
from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import controlplane

VENV_BIN = Path(sys.executable).parent
TINY = Path("/var/lib/kubevisor/images/tiny")
TARGET_RATE = 2.0
G, V = groups.GROUP, groups.VERSION

_quiet = False


def log(msg: str) -> None:
    if not _quiet:
        print(msg, file=sys.stderr, flush=True)


def template(*, disks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": groups.API_VERSION,
        "kind": "VMTemplate",
        "metadata": {"name": "bench-desk"},
        "spec": {
            "cpu": {"cores": 1},
            "memory": "64Mi",
            "disks": disks or [],
            "nics": [],
            "boot": {
                "kernel": str(TINY / "vmlinuz"),
                "initrd": str(TINY / "initrd.img"),
                "cmdline": "console=ttyS0 quiet no_timer_check",
            },
            "display": {"vnc": True},
        },
    }


def _custom(api: Any) -> Any:
    import kubernetes

    return kubernetes.client.CustomObjectsApi(api)


def measure_vms(
    api: Any, namespace: str, count: int, concurrency: int, timeout: float
) -> dict[str, Any]:
    bodies = [
        {
            "apiVersion": groups.API_VERSION,
            "kind": "VirtualMachine",
            "metadata": {"name": f"plain-{i:03d}"},
            "spec": {"runStrategy": "Always", "templateRef": {"name": "bench-desk"}},
        }
        for i in range(count)
    ]
    with h.PhaseWatch(api, namespace) as watch:
        t0 = time.monotonic()
        h.create_all(api, namespace, bodies, concurrency=concurrency)
        names = [b["metadata"]["name"] for b in bodies]
        h.wait_for("plain VMs Running", lambda: watch.count(names) == count, timeout=timeout)
        total = max(watch.seen_mono[n] for n in names) - t0
        each = [watch.seen_mono[n] - t0 for n in names]
    left = h.delete_all_vms(api, namespace, timeout=timeout)
    return {"count": count, "all_running_s": round(total, 3), "rate_per_s": round(count / total, 2),
            "running_s": h.Stats.of(each).json(), "left_after_delete": left}  # fmt: skip


def warm_up(api: Any, namespace: str, timeout: float) -> float:
    """One plain VM to Running and deleted before anything is measured, so neither set
    pays the first start of a node (libvirt, the base image in the page cache)."""
    body = {
        "apiVersion": groups.API_VERSION,
        "kind": "VirtualMachine",
        "metadata": {"name": "warm-up"},
        "spec": {"runStrategy": "Always", "templateRef": {"name": "bench-desk"}},
    }
    with h.PhaseWatch(api, namespace) as watch:
        t0 = time.monotonic()
        h.create_all(api, namespace, [body], concurrency=1)
        h.wait_for("warm-up VM Running", lambda: watch.count(["warm-up"]) == 1, timeout=timeout)
        took = watch.seen_mono["warm-up"] - t0
    h.delete_all_vms(api, namespace, timeout=timeout)
    return round(took, 3)


def measure_pool(api: Any, namespace: str, count: int, timeout: float) -> dict[str, Any]:
    custom = _custom(api)
    body = {
        "apiVersion": groups.API_VERSION,
        "kind": "DesktopPool",
        "metadata": {"name": "bench"},
        "spec": {"templateRef": {"name": "bench-desk"}, "min": count, "max": count, "spare": 0},
    }

    def status() -> dict[str, Any]:
        obj = custom.get_namespaced_custom_object(
            G, V, namespace, kinds.DESKTOPPOOL.plural, "bench"
        )
        return dict(obj.get("status") or {})

    with h.PhaseWatch(api, namespace) as watch:
        t0 = time.monotonic()
        custom.create_namespaced_custom_object(G, V, namespace, kinds.DESKTOPPOOL.plural, body)
        h.wait_for(
            "pool Ready",
            lambda: (s := status()).get("phase") == "Ready" and s.get("ready") == count,
            timeout=timeout,
            every=0.05,
        )
        ready_s = time.monotonic() - t0
        seen = dict(watch.seen_mono)
    each = [t - t0 for t in seen.values()]
    custom.delete_namespaced_custom_object(G, V, namespace, kinds.DESKTOPPOOL.plural, "bench")
    left = h.delete_all_vms(api, namespace, timeout=timeout)
    return {"count": count, "pool_ready_s": round(ready_s, 3),
            "all_running_s": round(max(each), 3) if each else None,
            "rate_per_s": round(count / ready_s, 2),
            "running_s": h.Stats.of(each).json(), "left_after_delete": left}  # fmt: skip


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    netns = f"kvbd-{os.getpid()}"
    procs = h.Processes(work / "logs")
    cp = controlplane.ControlPlane(state_dir=work / "cp")
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        cp.start()
        cp.install_crds()
        procs.spawn("controller", [str(VENV_BIN / "kubevisor-controller"),
                                   f"--kubeconfig={cp.kubeconfig}"])  # fmt: skip
        node_names = [f"dnode-{i}" for i in range(1, args.nodes + 1)]
        for node in node_names:
            procs.spawn(f"agent-{node}", [
                str(VENV_BIN / "kubevisor-agent"), f"--node={node}",
                f"--kubeconfig={cp.kubeconfig}", "--libvirt-uri=test:///default",
                f"--netns={netns}", f"--state-dir={work / node / 'state'}",
                f"--image-dir={work / node / 'images'}", "--cpu=4096", "--memory=4Ti",
                "--stop-timeout=5",
            ])  # fmt: skip
        api = h.api_client(cp.kubeconfig, pool=args.concurrency + 4)
        h.wait_for("agent Leases", lambda: h.nodes_with_leases(api, node_names), timeout=60)
        ns = "bench-desktops"
        h.ensure_namespace(api, ns)
        _custom(api).create_namespaced_custom_object(G, V, ns, "vmtemplates", template())
        log(f"test driver: control plane, controller, {len(node_names)} agents up")
        out: dict[str, Any] = {"nodes": len(node_names)}
        out["warm_up_s"] = warm_up(api, ns, args.timeout)
        out["plain_vms"] = measure_vms(api, ns, args.desktops, args.concurrency, args.timeout)
        log(f"plain VMs: {out['plain_vms']['all_running_s']} s")
        out["pool"] = measure_pool(api, ns, args.desktops, args.timeout)
        log(f"pool: {out['pool']['pool_ready_s']} s")
        base = out["plain_vms"]["all_running_s"]
        out["pool_vs_plain_ratio"] = round(out["pool"]["pool_ready_s"] / base, 2) if base else None
        if procs.dead():
            out["dead_processes"] = procs.dead()
        api.close()
        return out
    finally:
        procs.stop_all()
        cp.stop()
        subprocess.run(["ip", "netns", "del", netns], check=False)


def run_qemu(args: argparse.Namespace) -> dict[str, Any]:
    """The same two measurements on real QEMU (TCG) tiny guests: a dev cluster of
    ``--qemu-nodes`` simulated nodes, each desktop a linked clone of the tiny image."""
    if not (TINY / "vmlinuz").exists():
        raise RuntimeError(f"{TINY}/vmlinuz missing: run hack/build-guest.sh first")
    name = "kvdeskbench"
    dev = devcluster.up(name, nodes_count=args.qemu_nodes, stop_timeout=5.0,
                        agent_args=("--cpu=64", "--memory=16Gi"))  # fmt: skip
    try:
        api = h.api_client(dev.kubeconfig, pool=args.concurrency + 4)
        ns = "bench-desktops"
        h.ensure_namespace(api, ns)
        disks = [{"name": "root", "image": "tiny", "size": "1Gi", "clone": "linked",
                  "storage": "local"}]  # fmt: skip
        body = template(disks=disks)
        body["spec"]["memory"] = "128Mi"
        _custom(api).create_namespaced_custom_object(G, V, ns, "vmtemplates", body)
        log(f"qemu: dev cluster with {args.qemu_nodes} nodes up")
        out: dict[str, Any] = {"nodes": args.qemu_nodes}
        out["warm_up_s"] = warm_up(api, ns, args.timeout)
        out["plain_vms"] = measure_vms(api, ns, args.qemu, args.concurrency, args.timeout)
        log(f"qemu plain VMs: {out['plain_vms']['all_running_s']} s")
        out["pool"] = measure_pool(api, ns, args.qemu, args.timeout)
        log(f"qemu pool: {out['pool']['pool_ready_s']} s")
        base = out["plain_vms"]["all_running_s"]
        out["pool_vs_plain_ratio"] = round(out["pool"]["pool_ready_s"] / base, 2) if base else None
        api.close()
        return out
    finally:
        devcluster.down(name)


def table(r: dict[str, Any], *, target: bool = True) -> str:
    if "error" in r:
        return f"error: {r['error']}"
    p, b = r["pool"], r["plain_vms"]
    rows = [
        ("set", "count", "all Running / Ready s", "rate /s", "p50 s", "p95 s"),
        ("plain VMs (baseline)", b["count"], b["all_running_s"], b["rate_per_s"],
         b["running_s"]["p50"], b["running_s"]["p95"]),
        ("DesktopPool min=max", p["count"], p["pool_ready_s"], p["rate_per_s"],
         p["running_s"]["p50"], p["running_s"]["p95"]),
    ]  # fmt: skip
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    met = "met" if p["rate_per_s"] >= TARGET_RATE else "NOT met"
    goal = f"; target >= {TARGET_RATE} desktops/s on the test driver: {met}" if target else ""
    lines.append(f"pool / plain: {r['pool_vs_plain_ratio']}x{goal}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global _quiet
    p = argparse.ArgumentParser(prog="bench/desktop.py", description=__doc__.split("\n")[0])
    p.add_argument("--desktops", type=int, default=20)
    p.add_argument("--nodes", type=int, default=2, help="agents on the test driver")
    p.add_argument("--concurrency", type=int, default=10, help="client threads (baseline)")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--qemu", type=int, default=0, help="desktops on QEMU (0: skip)")
    p.add_argument("--qemu-nodes", type=int, default=2)
    p.add_argument("--json-only", action="store_true")
    p.add_argument("--keep-work", action="store_true")
    args = p.parse_args(argv)
    _quiet = args.json_only
    if os.geteuid() != 0:
        print("desktop.py needs root (a network namespace for the agents)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="kvbench-desk-"))
    interrupted = False
    with h.sigterm_as_interrupt():
        try:
            result = run(args, work)
        except KeyboardInterrupt:
            interrupted, result = True, {"error": "interrupted"}
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"failed: {exc} (logs: {work / 'logs'})")
            args.keep_work = True
    if args.keep_work:
        log(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    qemu: dict[str, Any] | None = None
    if args.qemu > 0 and not interrupted:
        with h.sigterm_as_interrupt():
            try:
                qemu = run_qemu(args)
            except KeyboardInterrupt:
                interrupted, qemu = True, {"error": "interrupted"}
            except Exception as exc:
                qemu = {"error": f"{type(exc).__name__}: {exc}"}
    if not args.json_only:
        print("test driver:\n" + table(result))
        if qemu is not None:
            print("QEMU (TCG tiny guests, linked clones):\n" + table(qemu, target=False))
    rate = (result.get("pool") or {}).get("rate_per_s")
    results = {"test": result, **({"qemu": qemu} if qemu is not None else {})}
    line = {"bench": "desktop", "results": results,
            "targets": {"test_provision_rate_per_s": TARGET_RATE,
                        "met": rate is not None and rate >= TARGET_RATE},
            "not_measured": "claim -> first frame (needs the display gateway)"}  # fmt: skip
    print(json.dumps(line, separators=(",", ":")))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
