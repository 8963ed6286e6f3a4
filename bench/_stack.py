"""The test-driver stack the benchmarks share: one controller and N agents, each agent on
its own ``test:///default`` libvirt (a real driver with a fake hypervisor) in one network
namespace, against a control plane the caller started. Written once here so vm_start and
desktop measure the same stack."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _harness as h

VENV_BIN = Path(sys.executable).parent


def spawn_test_driver(
    procs: h.Processes,
    kubeconfig: Path,
    work: Path,
    *,
    netns: str,
    node_names: Sequence[str],
    agent_args: Sequence[str] = (),
) -> None:
    """Start the controller and one test-driver agent per name (``procs`` stops them)."""
    procs.spawn("controller", [str(VENV_BIN / "kubevisor-controller"),
                               f"--kubeconfig={kubeconfig}"])  # fmt: skip
    for node in node_names:
        procs.spawn(f"agent-{node}", [
            str(VENV_BIN / "kubevisor-agent"), f"--node={node}",
            f"--kubeconfig={kubeconfig}", "--libvirt-uri=test:///default",
            f"--netns={netns}", f"--state-dir={work / node / 'state'}",
            f"--image-dir={work / node / 'images'}", "--cpu=4096", "--memory=4Ti",
            "--stop-timeout=5", *agent_args,
        ])  # fmt: skip


def leases_or_dead(api: Any, names: Sequence[str], procs: h.Processes) -> bool:
    """True once every node has its Lease; RuntimeError when a process died meanwhile
    (waiting on a dead agent's Lease would only time out)."""
    if procs.dead():
        raise RuntimeError(f"processes exited early: {procs.dead()} (logs in {procs.log_dir})")
    return h.nodes_with_leases(api, names)
