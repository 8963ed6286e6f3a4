"""The local cluster's fence step for simulated nodes (docs/node-loss.md).

A real cluster fences a lost node with a power switch or a BMC (STONITH: shoot the other
node in the head) and then marks it ``node.kubernetes.io/out-of-service``; only then may
its VMs start elsewhere. A simulated node has no power switch, so its fence step kills
everything running inside it (its libvirtd, virtlogd, QEMU guests and agent: every
process in its mount or network namespace) and, once nothing is left, puts the
out-of-service taint on its Node object. :class:`Fencer` does this for every node whose
Lease expired, as a small loop in the test or benchmark process; ``hack/nodes fence``
does it for one node from a shell, ``hack/nodes unfence`` removes the taint.

``power_on`` brings a fenced (or killed) node back: its libvirtd and virtlogd, then its
agent with the flags it ran with. The taint stays until ``unfence``: like an
administrator, the test decides when the node is trusted again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubevisor.api import nodeloss, nodes, rebalancepolicies
from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import nodelifecycle, nodeplans

log = logging.getLogger(__name__)


def node_pids(node: nodeplans.SimNode) -> list[int]:
    """Every process inside a simulated node: in its mount or network namespace."""
    mnt = nodelifecycle._ns_inode(node.mnt_ns_file)
    net = nodelifecycle._ns_inode(Path("/run/netns", node.netns))
    found: set[int] = set()
    if mnt is not None:
        found |= set(nodelifecycle._pids_in_namespaces("mnt", {mnt}))
    if net is not None:
        found |= set(nodelifecycle._pids_in_namespaces("net", {net}))
    return sorted(found)


def power_off(node: nodeplans.SimNode, *, timeout: float = 15.0) -> list[int]:
    """STONITH: SIGKILL every process of the node (no shutdown, as a pulled plug) and
    wait until none is left; the pids killed. The node's namespaces, disks and domain
    definitions stay (libvirt finds the domains shut off when it starts again)."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while pids := node_pids(node):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed.update(pids)
        if time.monotonic() > deadline:
            raise nodeplans.NodesError(f"processes of {node.name} survived SIGKILL: {pids}")
        time.sleep(0.05)  # polling for the kernel to finish the kills, with a deadline
    return sorted(killed)


def fence(dev: devcluster.DevCluster, node: str) -> None:
    """Power the node off, then taint its Node object out-of-service (in this order:
    the taint promises that nothing of the node runs any more)."""
    power_off(_sim(dev, node))
    devcluster.reap(dev, node)
    taint = nodeloss.out_of_service_taint()
    dev.run_kubectl(
        "taint", "node", node, f"{taint['key']}={taint['value']}:{taint['effect']}", "--overwrite"
    )
    log.info("fenced node %s: its processes killed, tainted %s", node, taint["key"])


def unfence(dev: devcluster.DevCluster, node: str) -> None:
    """Remove the out-of-service taint (the node is trusted again)."""
    dev.run_kubectl("taint", "node", node, f"{nodeloss.TAINT_OUT_OF_SERVICE}-")


def power_on(dev: devcluster.DevCluster, node: str, agent_flags: Sequence[str]) -> int:
    """Start a powered-off node again: virtlogd and libvirtd (libvirt finds its domains
    shut off), then its agent with ``agent_flags``; the agent's pid."""
    sim = _sim(dev, node)
    plan = nodeplans.plan_cluster(dev.name, len(dev.nodes), base_dir=dev.base_dir)
    nodelifecycle._start_daemons(next(p for p in plan.nodes if p.index == sim.index))
    return devcluster.start_agent(dev, node, agent_flags)


def _sim(dev: devcluster.DevCluster, node: str) -> nodeplans.SimNode:
    return next(n for n in dev.nodes if n.name == node)


def lost(dev: devcluster.DevCluster, *, now: datetime) -> list[str]:
    """The cluster's simulated nodes whose Lease expired (``nodes.NodeLease.alive``)."""
    raw = json.loads(
        dev.run_kubectl(
            "get", "leases", "-n", nodes.LEASE_NAMESPACE, "-l", nodes.AGENT_SELECTOR, "-o", "json"
        )
    )
    expired = {
        lease.name for lease in map(nodes.parse, raw.get("items") or []) if not lease.alive(now)
    }
    return [n.name for n in dev.nodes if n.name in expired]


def occupied(vms: Sequence[Mapping[str, Any]]) -> frozenset[str]:
    """The nodes some VM is placed on (``status.nodeName``)."""
    return frozenset(str(node) for vm in vms if (node := (vm.get("status") or {}).get("nodeName")))


def to_fence(
    lost_nodes: Sequence[str],
    *,
    tainted: frozenset[str],
    powered_off: frozenset[str],
    occupied: frozenset[str],
) -> list[str]:
    """The lost nodes to fence now (pure): not fenced yet, and not a node consolidation
    powered off with no VM on it (it is off on purpose and holds nothing to protect; its
    Lease lapsing is expected). A powered-off node that holds a VM anyway is fenced like
    any lost node: that is what lets its VM restart elsewhere."""
    return [n for n in lost_nodes if n not in tainted and (n not in powered_off or n in occupied)]


def tainted(dev: devcluster.DevCluster) -> frozenset[str]:
    """The nodes already fenced (their Node carries the out-of-service taint)."""
    raw = json.loads(dev.run_kubectl("get", "nodes", "-o", "json"))
    return nodeloss.fenced_nodes(raw.get("items") or [])


class Fencer:
    """A thread that fences every lost simulated node of ``dev`` (looks every ``every``
    seconds; which ones: :func:`to_fence`). ``fenced`` records (node, when) in order."""

    def __init__(self, dev: devcluster.DevCluster, *, every: float = 0.5) -> None:
        self.dev = dev
        self.every = every
        self.fenced: list[tuple[str, datetime]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fencer", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                raw = json.loads(self.dev.run_kubectl("get", "nodes", "-o", "json"))
                node_objects = raw.get("items") or []
                vms = json.loads(self.dev.run_kubectl("get", "virtualmachines", "-A", "-o", "json"))
                for node in to_fence(
                    lost(self.dev, now=datetime.now(UTC)),
                    tainted=nodeloss.fenced_nodes(node_objects),
                    powered_off=rebalancepolicies.powered_off(node_objects),
                    occupied=occupied(vms.get("items") or []),
                ):
                    fence(self.dev, node)
                    self.fenced.append((node, datetime.now(UTC)))
            except Exception as exc:  # keep fencing; the test reads the errors
                self.errors.append(repr(exc))
            self._stop.wait(self.every)

    def __enter__(self) -> Fencer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def main(argv: Sequence[str] | None = None) -> int:
    """``hack/nodes fence|unfence --cluster NAME NODE``."""
    parser = argparse.ArgumentParser(prog="hack/nodes", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("fence", "unfence"))
    parser.add_argument("node")
    parser.add_argument("--cluster", default="dev")
    parser.add_argument("--base-dir", type=Path, default=nodeplans.DEFAULT_BASE_DIR)
    args = parser.parse_args(argv)
    dev = devcluster.load(args.cluster, base_dir=args.base_dir)
    if dev is None:
        print(f"no dev cluster {args.cluster!r} is up", file=sys.stderr)
        return 1
    if args.node not in {n.name for n in dev.nodes}:
        print(f"cluster {args.cluster!r} has no node {args.node!r}", file=sys.stderr)
        return 1
    if args.command == "fence":
        fence(dev, args.node)
        print(f"node {args.node}: powered off, tainted {nodeloss.TAINT_OUT_OF_SERVICE}")
    else:
        unfence(dev, args.node)
        print(f"node {args.node}: taint {nodeloss.TAINT_OUT_OF_SERVICE} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
