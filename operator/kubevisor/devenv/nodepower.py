"""The local cluster's power switch for Consolidate (docs/rebalancing.md): a simulated node
whose Node object carries ``KubevisorPowerOff=True`` has its libvirtd stopped, and started
again when the condition turns False (woken) or goes away.

Only libvirtd: the node's network, mounts, virtlogd and agent stay, as a powered-off host's
BMC would (the agent's Lease keeps the node known, so it can be woken; the node is
cordoned by the rebalancer while marked). A real cluster acts on the same condition with
IPMI or Redfish; nothing here is product code.

``decide`` is pure; ``stop_libvirtd``/``start_libvirtd`` are the adapters; ``follow`` polls
the Node objects with kubectl. Run it beside a dev cluster:
``python -m kubevisor.devenv.nodepower --cluster dev --kubeconfig <path>``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kubevisor.api import rebalancepolicies
from kubevisor.devenv import nodelifecycle, nodeplans


@dataclass(frozen=True)
class Switch:
    """What to do now: nodes whose libvirtd to stop, and to start."""

    stop: tuple[str, ...]
    start: tuple[str, ...]


def decide(ours: Iterable[str], marked_off: frozenset[str], stopped: frozenset[str]) -> Switch:
    """For the cluster's nodes ``ours``: stop the marked ones still running, start the
    unmarked ones we stopped. A node we did not stop is never started."""
    names = sorted(set(ours))
    return Switch(
        stop=tuple(n for n in names if n in marked_off and n not in stopped),
        start=tuple(n for n in names if n in stopped and n not in marked_off),
    )


def _pid_file(node: nodeplans.SimNode) -> Path:
    return node.state_dir / "run/libvirt/libvirtd.pid"


def serving(node: nodeplans.SimNode) -> bool:
    """Whether the node's libvirtd answers (``virsh uri``)."""
    probe = subprocess.run(
        ["virsh", "-q", "-c", node.libvirt_uri, "uri"], capture_output=True, check=False
    )
    return probe.returncode == 0


def stop_libvirtd(node: nodeplans.SimNode, *, timeout: float = 30.0) -> None:
    """SIGTERM the node's libvirtd and wait until it is gone."""
    pid = nodelifecycle._read_pid(_pid_file(node))
    if not nodelifecycle._alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    nodelifecycle._wait_for(
        f"libvirtd of {node.name} to stop", lambda: not nodelifecycle._alive(pid), timeout=timeout
    )


def start_libvirtd(node: nodeplans.SimNode, *, timeout: float = 60.0) -> None:
    """Start the node's libvirtd (same flags as at creation) and wait until it serves."""
    if serving(node):
        return
    prefix = nodeplans.node_full_exec_prefix(node)
    nodelifecycle._run([*prefix, "libvirtd", "-d", "--listen", "-p", "/run/libvirt/libvirtd.pid"])
    nodelifecycle._wait_for(
        f"libvirtd of {node.name} to serve", lambda: serving(node), timeout=timeout
    )


def follow(
    cluster: str,
    kubeconfig: Path,
    *,
    kubectl: str = "kubectl",
    every: float = 2.0,
    base_dir: Path = nodeplans.DEFAULT_BASE_DIR,
    rounds: int | None = None,
    stopped: set[str] | None = None,
) -> None:
    """Poll the Node objects and switch libvirtds (``rounds``: stop after that many;
    ``stopped``: the nodes this follower stopped, kept across calls)."""
    sim = {n.name: n for n in nodelifecycle.load_cluster_nodes(cluster, base_dir=base_dir)}
    stopped = set() if stopped is None else stopped
    done = 0
    while rounds is None or done < rounds:
        out = subprocess.run(
            [kubectl, f"--kubeconfig={kubeconfig}", "get", "nodes", "-o", "json"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if out.returncode == 0:
            items = json.loads(out.stdout).get("items") or []
            switch = decide(sim, rebalancepolicies.powered_off(items), frozenset(stopped))
            for name in switch.stop:
                stop_libvirtd(sim[name])
                stopped.add(name)
                print(f"nodepower: stopped libvirtd of {name}", flush=True)
            for name in switch.start:
                start_libvirtd(sim[name])
                stopped.discard(name)
                print(f"nodepower: started libvirtd of {name}", flush=True)
        done += 1
        time.sleep(every)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--kubeconfig", required=True, type=Path)
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument("--base-dir", type=Path, default=nodeplans.DEFAULT_BASE_DIR)
    args = ap.parse_args(argv)
    try:
        follow(args.cluster, args.kubeconfig, kubectl=args.kubectl, base_dir=args.base_dir)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
