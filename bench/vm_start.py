"""Benchmark (issue 3): apply -> Running latency and API writes per VM, against raw libvirt.

Two sets, each on its own fresh control plane (kube-apiserver with an audit log):

- test driver: controller + ``--nodes-test`` agents (default 5), each on its own
  ``test:///default`` libvirt (a real driver with a fake hypervisor), ``--vms-test``
  VirtualMachines (default 500), no disks, no NICs: the control path at scale.
- QEMU: ``--nodes`` simulated nodes (default 3, devenv: netns + own libvirtd) with
  controller + one agent each, ``--vms-qemu`` tiny guests (default 50; 128Mi, direct
  kernel boot of the tiny image, one NIC on the node bridge, TCG).

Per set: the VMs are created with ``--concurrency`` client threads (like one
``kubectl apply`` of a file holding them all); a watch records when each VM's phase
turns ``Running`` (the agent reports it once libvirt says the domain runs, not when the
guest has booted). Latency = that moment minus the moment its create was sent. The
status-derived number ``status.runningAt - metadata.creationTimestamp`` is reported too
(both have 1 s resolution, so it is coarse).

Writes: the API server's audit log (every create/update/patch on virtualmachines and
virtualmachines/status), counted per VM up to the moment it was seen Running, and after
the writes settle; split into status writes, metadata writes (finalizers, labels, kopf
bookkeeping) and by writer (user, controller, agent).

Baseline, same run, same domain XML: define + start directly with libvirt-python (no
Kubernetes): sequentially (the pure libvirt cost of one VM) and with the VMs' arrival
pattern (all at once, or ``--interval-*``) and the agents' libvirt concurrency (4 threads
per node, one connection per node).
For QEMU the XMLs are the agent's own (``dumpxml --inactive``), started on the same nodes
after the VMs were deleted; for the test driver they come from the agent's pure
conversion (``domainxml.render``) of each VM's ``status.machine``.
Overhead = kubevisor p50/p95 minus raw same-arrivals p50/p95.

Prints a table and ONE JSON line. Never asserts a time; targets are reported, not
enforced (p95 <= 2 s for QEMU; <= 3 status writes for every VM, i.e. on the maximum over
VMs, not the mean). Cleans up everything (VMs, processes, nodes, netns, temp dirs) on
success, failure and Ctrl-C/SIGTERM.

Run as root from the repo root:
    .venv/bin/python bench/vm_start.py [--vms-test 500] [--vms-qemu 50] [--nodes 3]
        [--nodes-test 5] [--concurrency 10] [--interval-test S] [--interval-qemu S]
        [--skip-qemu] [--skip-test] [--json-only]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import libvirt  # baseline only; the product imports it in agent/libvirt

import _apibaseline
import _harness as h
import _profiling
import _stack as stack
from kubevisor.agent import domainxml
from kubevisor.api import groups, kinds, machines
from kubevisor.devenv import controlplane, nodes

VENV_BIN = Path(sys.executable).parent
IMAGE_DIR = Path("/var/lib/kubevisor/images")
TINY = IMAGE_DIR / "tiny"
AGENT_WORKERS = 4  # vms.realizing.AgentConfig.workers and Hypervisor workers
QEMU_CLUSTER = "kvbench"
TARGET_P95_QEMU = 2.0
TARGET_STATUS_WRITES = 3

_quiet = False


def log(msg: str) -> None:
    if not _quiet:
        print(f"[vm_start] {msg}", file=sys.stderr, flush=True)


libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


# --- pieces --------------------------------------------------------------------------------


def template(*, memory: str, nics: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "cpu": {"cores": 1},
        "memory": memory,
        "disks": [],
        "nics": [{"name": "eth0", "network": "default"}] if nics else [],
        "boot": {
            "kernel": str(TINY / "vmlinuz"),
            "initrd": str(TINY / "initrd.img"),
            "cmdline": "console=ttyS0 quiet no_timer_check",  # TCG under load: see guest docs
        },
        "display": {"vnc": False},
        "console": {"serial": True},
    }
    return {
        "apiVersion": groups.API_VERSION,
        "kind": "VMTemplate",
        "metadata": {"name": "bench-tiny"},
        "spec": spec,
    }


def vm_bodies(count: int) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": groups.API_VERSION,
            "kind": "VirtualMachine",
            "metadata": {"name": f"vm-{i:04d}"},
            "spec": {"runStrategy": "Always", "templateRef": {"name": "bench-tiny"}},
        }
        for i in range(count)
    ]


def audited_controlplane(state_dir: Path) -> controlplane.ControlPlane:
    state_dir.mkdir(parents=True, exist_ok=True)
    policy = state_dir / "audit-policy.yaml"
    policy.write_text(h.AUDIT_POLICY)
    return controlplane.ControlPlane(
        state_dir=state_dir,
        extra_args=[
            f"--audit-policy-file={policy}",
            f"--audit-log-path={state_dir / 'audit.log'}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
            "--audit-log-maxsize=0",
        ],
    )


def raw_start(conn: libvirt.virConnect, xml: str) -> None:
    dom = conn.defineXML(xml)
    dom.create()


def raw_sequential(uri: str, xmls: list[str]) -> list[float]:
    """Define + start each domain one after the other; seconds per domain."""
    conn = libvirt.open(uri)
    out = []
    try:
        for xml in xmls:
            t0 = time.monotonic()
            raw_start(conn, xml)
            out.append(time.monotonic() - t0)
    finally:
        conn.close()
    return out


def raw_arrivals(
    uris: list[str], xmls: list[str], *, workers_per_node: int, interval: float
) -> list[float]:
    """Domains submitted with the VMs' arrival pattern (all at once, or one every
    ``interval`` s), round-robin over nodes, ``workers_per_node`` threads sharing one
    connection per node (the agent's shape); seconds from each submit to running."""
    conns = [libvirt.open(u) for u in uris]
    pools = [ThreadPoolExecutor(max_workers=workers_per_node) for _ in uris]
    done: list[float] = []
    try:
        t0 = time.monotonic()

        def one(conn: libvirt.virConnect, xml: str, submitted: float) -> None:
            raw_start(conn, xml)
            done.append(time.monotonic() - submitted)

        futures = []
        for i, xml in enumerate(xmls):
            if interval > 0:
                time.sleep(max(0.0, t0 + i * interval - time.monotonic()))
            n = i % len(uris)
            futures.append(pools[n].submit(one, conns[n], xml, time.monotonic()))
        for f in futures:
            f.result()
    finally:
        for p in pools:
            p.shutdown()
        for c in conns:
            c.close()
    return done


def raw_cleanup(uri: str, names: set[str]) -> None:
    with contextlib.closing(libvirt.open(uri)) as conn:
        for dom in conn.listAllDomains():
            if dom.name() in names:
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefine()


def rename(xml: str, name: str) -> str:
    """The same domain under another name and without its UUID (libvirt assigns one)."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    el = root.find("name")
    assert el is not None
    el.text = name
    uuid_el = root.find("uuid")
    if uuid_el is not None:
        root.remove(uuid_el)
    return ET.tostring(root, encoding="unicode")


def settle_writes(
    audit: Path, namespace: str, *, quiet_for: float = 2.0, limit: float = 30.0
) -> None:
    """Wait until no VM write has arrived for ``quiet_for`` seconds (bounded by ``limit``)."""
    last_n, last_change = -1, time.monotonic()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        n = len(h.read_audit(audit, namespace=namespace))
        if n != last_n:
            last_n, last_change = n, time.monotonic()
        elif time.monotonic() - last_change >= quiet_for:
            return
        time.sleep(0.25)


def measure_set(
    *,
    api: Any,
    cp: controlplane.ControlPlane,
    namespace: str,
    count: int,
    concurrency: int,
    interval: float,
    timeout: float,
    tmpl: dict[str, Any],
    before_delete: Callable[[dict[str, dict[str, Any]]], None],
) -> dict[str, Any]:
    """Apply ``count`` VMs, time them to Running, count writes; ``before_delete`` gets
    the final objects (to take the domain XMLs) before the VMs are deleted."""
    import kubernetes

    h.ensure_namespace(api, namespace)
    kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
        groups.GROUP, groups.VERSION, namespace, kinds.VMTEMPLATE.plural, tmpl
    )
    bodies = vm_bodies(count)
    names = [b["metadata"]["name"] for b in bodies]
    with h.PhaseWatch(api, namespace) as watch:
        t0 = time.monotonic()
        sent = h.create_all(api, namespace, bodies, concurrency=concurrency, interval=interval)
        log(f"{count} VMs created in {time.monotonic() - t0:.2f}s; waiting for Running")
        last = [0.0]

        def all_running() -> bool:
            n = watch.count(names)
            if time.monotonic() - last[0] > 10:
                last[0] = time.monotonic()
                log(f"  running {n}/{count}  phases {watch.phases()}")
            return n == count

        complete = True
        try:
            h.wait_for("all VMs Running", all_running, timeout=timeout)
        except TimeoutError as exc:
            complete = False
            log(f"{exc}: phases {watch.phases()}")
        wall_all = time.monotonic() - t0
        latencies = [watch.seen_mono[n] - sent[n] for n in names if n in watch.seen_mono]
        settle_writes(cp.state_dir / "audit.log", namespace)
        objects = dict(watch.objects)
        until = dict(watch.seen_wall)
    status_lat = []
    per_node: dict[str, int] = {}
    for obj in objects.values():
        st = obj.get("status") or {}
        per_node[st.get("nodeName") or "-"] = per_node.get(st.get("nodeName") or "-", 0) + 1
        if st.get("runningAt"):
            status_lat.append(
                h.parse_time(st["runningAt"]) - h.parse_time(obj["metadata"]["creationTimestamp"])
            )
    writes = h.read_audit(cp.state_dir / "audit.log", namespace=namespace)
    creates_logged = sum(1 for w in writes if w.verb == "create" and w.writer == "user")
    server = h.server_times(writes)
    to_running = h.count_writes(writes, names=until.keys(), until=until)
    settled = h.count_writes(writes, names=names)
    before_delete(objects)
    t_del = time.monotonic()
    left = h.delete_all_vms(api, namespace, timeout=max(120.0, timeout))
    log(f"deleted in {time.monotonic() - t_del:.1f}s ({left} left)")
    return {
        "vms": count,
        "running": len(latencies),
        "complete": complete,
        "apply_to_running_s": h.Stats.of(latencies).json(),
        "server_create_to_running_write_s": h.Stats.of(
            h.spans(server, "created", "running")
        ).json(),
        "server_create_to_placed_s": h.Stats.of(h.spans(server, "created", "placed")).json(),
        "server_placed_to_running_s": h.Stats.of(h.spans(server, "placed", "running")).json(),
        "status_runningAt_minus_created_s": h.Stats.of(status_lat).json(1),
        "all_running_after_s": round(wall_all, 2),
        "writes_to_running": to_running.json(),
        "writes_settled": settled.json(),
        "creates_in_audit": creates_logged,
        "per_node": dict(sorted(per_node.items())),
        "left_after_delete": left,
    }


def baseline(uris: list[str], xmls: list[str], *, interval: float) -> dict[str, Any]:
    """Raw libvirt define+start of the same XMLs: sequential on the first node, then with
    the VMs' arrival pattern over all nodes; the domains are removed after each."""
    seq_xmls = [rename(x, f"raw-seq-{i:04d}") for i, x in enumerate(xmls)]
    burst_xmls = [rename(x, f"raw-burst-{i:04d}") for i, x in enumerate(xmls)]
    names = {f"raw-seq-{i:04d}" for i in range(len(xmls))} | {
        f"raw-burst-{i:04d}" for i in range(len(xmls))
    }
    try:
        log(f"raw libvirt: {len(xmls)} sequential define+start on {uris[0]}")
        seq = raw_sequential(uris[0], seq_xmls)
        raw_cleanup(uris[0], names)
        log(f"raw libvirt: {len(xmls)} with the same arrivals over {len(uris)} node(s)")
        burst = raw_arrivals(uris, burst_xmls, workers_per_node=AGENT_WORKERS, interval=interval)
    finally:
        for u in uris:
            raw_cleanup(u, names)
    return {"sequential_s": h.Stats.of(seq).json(), "same_arrivals_s": h.Stats.of(burst).json()}


def overhead(result: dict[str, Any]) -> dict[str, float | None]:
    kv, raw = result["apply_to_running_s"], result["raw_libvirt"]["same_arrivals_s"]
    out: dict[str, float | None] = {}
    for q in ("p50", "p95"):
        a, b = kv.get(q), raw.get(q)
        out[q] = None if a is None or b is None else round(a - b, 3)
    return out


# --- the two sets ----------------------------------------------------------------------------


def run_test_driver(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    netns = f"kvb-{os.getpid()}"
    procs = h.Processes(work / "logs")
    cp = audited_controlplane(work / "cp")
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "add", "kvbr0", "type", "bridge"], check=True)
        cp.start()
        cp.install_crds()
        node_names = [f"tnode-{i}" for i in range(1, args.nodes_test + 1)]
        api = h.api_client(cp.kubeconfig, pool=args.concurrency + 4)
        api_base = api_baseline(api, args, node_names)
        stack.spawn_test_driver(procs, cp.kubeconfig, work, netns=netns, node_names=node_names,
                                agent_args=["--network=default=kvbr0"])  # fmt: skip
        h.wait_for("agent Leases", lambda: stack.leases_or_dead(api, node_names, procs), timeout=60)
        log(f"test driver: control plane, controller, {len(node_names)} agents up")
        profiles = start_profiles(args, procs, "test")
        xmls: list[str] = []

        def take_xmls(objects: dict[str, dict[str, Any]]) -> None:
            for name, obj in sorted(objects.items()):
                st = obj.get("status") or {}
                if not st.get("machine"):
                    continue
                ident = domainxml.Identity(
                    namespace=obj["metadata"]["namespace"], name=name, uid=obj["metadata"]["uid"]
                )
                xmls.append(domainxml.render(
                    machines.MachineSpec.model_validate(st["machine"]), ident,
                    domainxml.Placement(console_log=work / "console" / f"{name}.log"),
                    domainxml.HostFacts(),
                ))  # fmt: skip

        result = measure_set(
            api=api, cp=cp, namespace="bench-test", count=args.vms_test,
            concurrency=args.concurrency, interval=args.interval_test, timeout=args.timeout_test,
            tmpl=template(memory="64Mi", nics=False), before_delete=take_xmls,
        )  # fmt: skip
        result["peak_rss_mb"] = procs.peak_rss_mb()
        stop_profiles(profiles)
        result["api_baseline"] = api_base
        result["all_running_over_api_baseline"] = (
            round(result["all_running_after_s"] / api_base["all_done_s"], 2)
            if api_base["all_done_s"] else None
        )  # fmt: skip
        result["nodes"] = len(node_names)
        result["raw_libvirt"] = baseline(
            ["test:///default"] * len(node_names), xmls, interval=args.interval_test
        )
        result["interval_s"] = args.interval_test
        result["overhead_vs_raw_s"] = overhead(result)
        if procs.dead():
            result["dead_processes"] = procs.dead()
        api.close()
        return result
    finally:
        procs.stop_all()
        cp.stop()
        subprocess.run(["ip", "netns", "del", netns], check=False)


def api_baseline(api: Any, args: argparse.Namespace, node_names: list[str]) -> dict[str, Any]:
    """The same VMs' writes from a plain client, no operator yet (``_apibaseline``)."""
    ns = "bench-api"
    h.ensure_namespace(api, ns)
    got = _apibaseline.measure(api, ns, vm_bodies(args.vms_test), concurrency=args.concurrency,
                               nodes=node_names)  # fmt: skip
    _apibaseline.clean(api, ns)
    h.delete_all_vms(api, ns, timeout=120)
    per_vm = got.pop("per_vm_s")
    log(f"API baseline: {got['writes']} writes in {got['all_done_s']}s")
    return {**got, "per_vm_s": h.Stats.of(per_vm).json()}


def start_profiles(
    args: argparse.Namespace, procs: h.Processes, key: str
) -> _profiling.Profiles | None:
    """``--profile``: py-spy on the controller and the first agent."""
    if args.profile is None:
        return None
    profiles = _profiling.Profiles(Path(args.profile) / key)
    agents = sorted(n for n in procs.procs if n.startswith("agent-"))
    for name in ["controller", *agents[:1]]:
        if not profiles.attach(name, procs.procs[name].pid):
            log("--profile: py-spy not found (.venv/bin/pip install py-spy); not profiling")
            return None
    log(f"profiling controller and {agents[0]} into {profiles.directory}")
    return profiles


def stop_profiles(profiles: _profiling.Profiles | None) -> None:
    if profiles is not None:
        written = profiles.stop()
        log(f"profiles written: {profiles.directory} ({', '.join(p.name for p in written)})")


def run_qemu(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    if not (TINY / "vmlinuz").exists():
        raise RuntimeError(f"{TINY}/vmlinuz missing: run hack/build-guest.sh first")
    procs = h.Processes(work / "logs")
    cp = audited_controlplane(work / "cp")
    try:
        t0 = time.monotonic()
        sim = nodes.create_cluster_nodes(QEMU_CLUSTER, args.nodes)
        log(f"qemu: {len(sim)} simulated nodes in {time.monotonic() - t0:.1f}s")
        cp.start()
        cp.install_crds()
        procs.spawn("controller", [str(VENV_BIN / "kubevisor-controller"),
                                   f"--kubeconfig={cp.kubeconfig}"])  # fmt: skip
        for node in sim:
            procs.spawn(f"agent-{node.name}", [
                *nodes.node_mount_exec_prefix(node), str(VENV_BIN / "kubevisor-agent"),
                f"--node={node.name}", f"--kubeconfig={cp.kubeconfig}",
                "--libvirt-uri=qemu:///system", f"--netns={node.netns}",
                f"--state-dir={node.state_dir / 'kubevisor'}", f"--image-dir={IMAGE_DIR}",
                f"--shared-dir={node.shared_dir}", f"--address={node.fabric_ip}",
                "--network=default=kvbr0", "--cpu=64", "--memory=16Gi", "--stop-timeout=5",
            ])  # fmt: skip
        api = h.api_client(cp.kubeconfig, pool=args.concurrency + 4)
        h.wait_for("agent Leases", lambda: stack.leases_or_dead(api, [n.name for n in sim], procs),
                   timeout=60)  # fmt: skip
        log(f"qemu: control plane, controller, {len(sim)} agents up")
        profiles = start_profiles(args, procs, "qemu")
        uri_of = {n.name: n.libvirt_uri for n in sim}
        xmls: list[str] = []

        def take_xmls(objects: dict[str, dict[str, Any]]) -> None:
            conns = {name: libvirt.open(uri) for name, uri in uri_of.items()}
            try:
                for name, obj in sorted(objects.items()):
                    node = (obj.get("status") or {}).get("nodeName")
                    if node not in conns:
                        continue
                    with contextlib.suppress(libvirt.libvirtError):
                        dom = conns[node].lookupByName(f"{obj['metadata']['namespace']}_{name}")
                        xmls.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            finally:
                for c in conns.values():
                    c.close()

        result = measure_set(
            api=api, cp=cp, namespace="bench-qemu", count=args.vms_qemu,
            concurrency=args.concurrency, interval=args.interval_qemu, timeout=args.timeout_qemu,
            tmpl=template(memory="128Mi", nics=True), before_delete=take_xmls,
        )  # fmt: skip
        result["peak_rss_mb"] = procs.peak_rss_mb()
        stop_profiles(profiles)
        result["nodes"] = len(sim)
        result["raw_libvirt"] = baseline(
            [n.libvirt_uri for n in sim], xmls, interval=args.interval_qemu
        )
        result["interval_s"] = args.interval_qemu
        result["overhead_vs_raw_s"] = overhead(result)
        if procs.dead():
            result["dead_processes"] = procs.dead()
        api.close()
        return result
    finally:
        procs.stop_all()
        cp.stop()
        nodes.destroy_cluster_nodes(QEMU_CLUSTER)


# --- output ----------------------------------------------------------------------------------


def _f(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = [f"{'set':<6} {'measure':<38} {'n':>4} {'p50 s':>8} {'p95 s':>8} {'max s':>8}"]
    for key, r in results.items():
        if "error" in r:
            rows.append(f"{key:<6} error: {r['error']}")
            continue
        label = f"{key}"
        for what, st in (
            (f"kubevisor apply->Running ({r['nodes']} nodes)", r["apply_to_running_s"]),
            ("  audit: create -> Running status write", r["server_create_to_running_write_s"]),
            ("    of which create -> placed (ctrl)", r["server_create_to_placed_s"]),
            ("    of which placed -> Running (agent)", r["server_placed_to_running_s"]),
            ("  status runningAt-creationTimestamp", r["status_runningAt_minus_created_s"]),
            ("raw libvirt define+start, sequential", r["raw_libvirt"]["sequential_s"]),
            ("raw libvirt define+start, same arrivals", r["raw_libvirt"]["same_arrivals_s"]),
        ):
            rows.append(f"{label:<6} {what:<38} {st['n']:>4} {_f(st['p50']):>8} "
                        f"{_f(st['p95']):>8} {_f(st['max']):>8}")  # fmt: skip
        o = r["overhead_vs_raw_s"]
        rows.append(f"{label:<6} {'overhead vs raw, same arrivals':<38} {'':>4} {_f(o['p50']):>8} "
                    f"{_f(o['p95']):>8}")  # fmt: skip
        for what, w in (("to Running", r["writes_to_running"]), ("settled", r["writes_settled"])):
            by = " ".join(f"{k}={v}" for k, v in w["by_writer"].items())
            rows.append(f"{label:<6} writes/VM {what:<11} total {w['total']:.2f}  status "
                        f"{w['status']:.2f} (max {w['max_status']})  metadata {w['metadata']:.2f}"
                        f"  failed {w['failed']:.2f}  [{by}]")  # fmt: skip
        base = r.get("api_baseline")
        if base:
            rows.append(f"{label:<6} API baseline (plain client, {base['concurrency']} threads, "
                        f"no operator): {base['writes']} writes in {base['all_done_s']}s; "
                        f"all Running / it = {r['all_running_over_api_baseline']}")  # fmt: skip
        rss = " ".join(f"{k}={v}" for k, v in sorted(r.get("peak_rss_mb", {}).items()))
        rows.append(f"{label:<6} peak RSS MB: {rss}")
        rows.append(f"{label:<6} interval {r['interval_s']}s; all {r['running']}/{r['vms']} "
                    f"Running after "
                    f"{r['all_running_after_s']}s; per node {r['per_node']}")  # fmt: skip
    return "\n".join(rows)


def targets(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    q = results.get("qemu")
    if q and "error" not in q:
        p95 = q["apply_to_running_s"]["p95"]
        out["qemu_p95_le_2s"] = None if p95 is None else p95 <= TARGET_P95_QEMU
    for key, r in results.items():
        if "error" not in r:
            # per VM: the VM with the most status writes decides, not the mean
            out[f"{key}_status_writes_le_3_every_vm"] = (
                r["writes_to_running"]["max_status"] <= TARGET_STATUS_WRITES
            )
    return out


def main(argv: list[str] | None = None) -> int:
    global _quiet
    p = argparse.ArgumentParser(prog="bench/vm_start.py", description=__doc__.split("\n")[0])
    p.add_argument("--vms-test", type=int, default=500)
    p.add_argument("--vms-qemu", type=int, default=50)
    p.add_argument("--nodes", type=int, default=3, help="simulated QEMU nodes")
    p.add_argument("--nodes-test", type=int, default=5, help="agents on the test driver")
    p.add_argument("--concurrency", type=int, default=10, help="client threads creating VMs")
    p.add_argument("--interval-test", type=float, default=0.0,
                   help="seconds between VM creates (0: all at once)")  # fmt: skip
    p.add_argument("--interval-qemu", type=float, default=0.0,
                   help="seconds between VM creates (0: all at once)")  # fmt: skip
    p.add_argument("--timeout-test", type=float, default=300.0)
    p.add_argument("--timeout-qemu", type=float, default=600.0)
    p.add_argument("--skip-qemu", action="store_true")
    p.add_argument("--skip-test", action="store_true")
    p.add_argument("--json-only", action="store_true")
    p.add_argument("--keep-work", action="store_true", help="keep logs and audit logs")
    p.add_argument("--profile", nargs="?", const="", default=None, metavar="DIR",
                   help="py-spy profiles of the controller and an agent into DIR "
                   "(default: a new temp dir), printed at the end")  # fmt: skip
    args = p.parse_args(argv)
    _quiet = args.json_only
    if args.profile == "":
        args.profile = tempfile.mkdtemp(prefix="kvbench-profile-")
    if os.geteuid() != 0:
        print("vm_start.py needs root (namespaces, libvirtd)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="kvbench-"))
    results: dict[str, dict[str, Any]] = {}
    interrupted = False
    with h.sigterm_as_interrupt():
        for key, run, wanted in (
            ("test", run_test_driver, not args.skip_test and args.vms_test > 0),
            ("qemu", run_qemu, not args.skip_qemu and args.vms_qemu > 0),
        ):
            if not wanted or interrupted:
                continue
            try:
                results[key] = run(args, work / key)
            except KeyboardInterrupt:
                interrupted = True
                results[key] = {"error": "interrupted"}
            except Exception as exc:  # report, and still run the other set
                results[key] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"{key} failed: {exc} (logs: {work / key / 'logs'})")
                args.keep_work = True
    if args.profile is not None:
        print(f"profiles: {args.profile}", file=sys.stderr)
    if args.keep_work:
        log(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if not args.json_only:
        print(table(results))
    line = {"bench": "vm_start", "results": results, "targets": targets(results),
            "kubevirt_published_p50_s": "15-25"}  # fmt: skip
    print(json.dumps(line, separators=(",", ":")))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
