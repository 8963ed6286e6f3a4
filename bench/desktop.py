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

Rate = desktops / time to all Running.

With ``--frames N`` (and ``--qemu``) the QEMU cluster also runs ``kubevisor-gateway`` and
measures claim -> desktop usable in the browser (websocket open through the gateway and
the first FramebufferUpdate received), N claims with a spare and N without, each against
a direct connection to the same VNC (bench/_frames.py says exactly what is timed).

Prints a table and ONE JSON line; never asserts a time (targets reported, not enforced:
>= 2 desktops/s on the test driver; claim -> first frame p95 <= 2 s with a spare).

Run as root from the repo root:
    .venv/bin/python bench/desktop.py [--desktops 20] [--nodes 2] [--concurrency 10]
        [--qemu 8] [--qemu-nodes 2] [--frames 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _frames as frames
import _harness as h
import _stack as stack
from kubevisor.api import groups, kinds
from kubevisor.controller.desktopclaims import handlers
from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import controlplane

VENV_BIN = Path(sys.executable).parent
ENV_GATEWAY_URL = handlers.ENV_GATEWAY_URL
TINY = Path("/var/lib/kubevisor/images/tiny")
TARGET_RATE = 2.0
TARGET_FRAME_P95 = 2.0
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
        node_names = [f"dnode-{i}" for i in range(1, args.nodes + 1)]
        stack.spawn_test_driver(procs, cp.kubeconfig, work, netns=netns, node_names=node_names)
        api = h.api_client(cp.kubeconfig, pool=args.concurrency + 4)
        h.wait_for("agent Leases", lambda: stack.leases_or_dead(api, node_names, procs), timeout=60)
        ns = "bench-desktops"
        h.ensure_namespace(api, ns)
        _custom(api).create_namespaced_custom_object(G, V, ns, "vmtemplates", template())
        log(f"test driver: control plane, controller, {len(node_names)} agents up")
        out = provisioning(api, ns, args.desktops, args, what="test driver")
        out["nodes"] = len(node_names)
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
    # The controller (started by devcluster.up) inherits this and mints URLs for the
    # gateway claim_frames starts.
    os.environ[ENV_GATEWAY_URL] = f"http://127.0.0.1:{_free_port()}"
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
        out = provisioning(api, ns, args.qemu, args, what="qemu")
        out["nodes"] = args.qemu_nodes
        if args.frames > 0:
            out["claim_to_first_frame"] = claim_frames(dev, api, ns, args)
        api.close()
        return out
    finally:
        os.environ.pop(ENV_GATEWAY_URL, None)
        devcluster.down(name)


def provisioning(
    api: Any, ns: str, count: int, args: argparse.Namespace, *, what: str
) -> dict[str, Any]:
    """A warm-up VM, then ``count`` plain VMs (the baseline), then a pool of ``count``."""
    out: dict[str, Any] = {"warm_up_s": warm_up(api, ns, args.timeout)}
    out["plain_vms"] = measure_vms(api, ns, count, args.concurrency, args.timeout)
    log(f"{what} plain VMs: {out['plain_vms']['all_running_s']} s")
    out["pool"] = measure_pool(api, ns, count, args.timeout)
    log(f"{what} pool: {out['pool']['pool_ready_s']} s")
    base = out["plain_vms"]["all_running_s"]
    out["pool_vs_plain_ratio"] = round(out["pool"]["pool_ready_s"] / base, 2) if base else None
    return out


def claim_frames(
    dev: devcluster.DevCluster, api: Any, ns: str, args: argparse.Namespace
) -> dict[str, Any]:
    """The gateway process on the dev cluster, then claim -> first frame (bench/_frames)."""
    port = int(urlsplit(os.environ[ENV_GATEWAY_URL]).port or 0)
    argv = [
        str(VENV_BIN / "kubevisor-gateway"), f"--kubeconfig={dev.kubeconfig}",
        "--key-namespace=kubevisor-system", "--host=127.0.0.1", f"--port={port}",
        f"--display-netns=kv-{dev.name}-{{node}}",
    ]  # fmt: skip
    procs = h.Processes(dev.cluster_dir / "logs")
    procs.spawn("gateway", argv)
    try:
        h.wait_for("the gateway listening", lambda: _listening(port), timeout=30)
        sampler = frames.Sampler(
            api, ns, gateway=f"http://127.0.0.1:{port}",
            netns_template=f"kv-{dev.name}-{{node}}", timeout=args.timeout,
        )  # fmt: skip
        out = frames.measure(sampler, template="bench-desk", samples=args.frames)
        log(f"claim -> first frame: {out}")
        return out
    finally:
        procs.stop_all()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    if (f := r.get("claim_to_first_frame")) is not None:
        lines.append(frames_table(f))
    return "\n".join(lines)


def frames_table(f: dict[str, Any]) -> str:
    """Claim -> first frame per case and stage, with the direct baselines."""
    rows: list[tuple[Any, ...]] = [("claim -> (s)", "n", "p50", "p95", "max")]
    for case in ("with_spare", "without_spare"):
        for stage in ("bound_s", "ws_open_s", "first_frame_s"):
            st = f[case][stage]
            rows.append((f"{case} {stage}", st["n"], st["p50"], st["p95"], st["max"]))
    for base in ("direct_to_running_desktop_first_frame_s", "plain_vm_first_frame_s"):
        st = f[base]
        rows.append((f"baseline {base}", st["n"], st["p50"], st["p95"], st["max"]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    p95 = f["with_spare"]["first_frame_s"]["p95"]
    met = "met" if p95 is not None and p95 <= TARGET_FRAME_P95 else "NOT met"
    lines.append(f"target claim -> first frame p95 <= {TARGET_FRAME_P95} s with a spare: {met}")
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
    p.add_argument(
        "--frames",
        type=int,
        default=5,
        help="claims measured to first frame, with and without a spare (0: skip)",
    )
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
    f = (qemu or {}).get("claim_to_first_frame")
    p95 = f["with_spare"]["first_frame_s"]["p95"] if f else None
    frame_met = None if p95 is None else p95 <= TARGET_FRAME_P95
    line = {"bench": "desktop", "results": results,
            "targets": {"test_provision_rate_per_s": TARGET_RATE,
                        "met": rate is not None and rate >= TARGET_RATE,
                        "claim_first_frame_p95_s_with_spare": TARGET_FRAME_P95,
                        "first_frame_met": frame_met}}  # fmt: skip
    print(json.dumps(line, separators=(",", ":")))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
