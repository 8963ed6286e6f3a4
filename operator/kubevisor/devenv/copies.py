"""A watcher for the one failure that must never happen: two running copies of a VM.

Polls every simulated node's libvirtd (``virsh list --state-running``) in a thread for as
long as it is entered and records every domain proven to run on two nodes at once. A
node whose libvirtd is down (killed, fenced) reads as running nothing.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Sequence

from kubevisor.devenv import nodeplans


def running(node: nodeplans.SimNode) -> set[str]:
    """The domains running on ``node`` now (none when its libvirtd does not answer)."""
    out = subprocess.run(
        ["virsh", "-c", node.libvirt_uri, "list", "--state-running", "--name"],
        capture_output=True, text=True, check=False, timeout=30,
    ).stdout  # fmt: skip
    return {line.strip() for line in out.splitlines() if line.strip()}


class TwoCopies:
    """Polls the nodes' libvirtds; ``seen`` lists (domain, [node, node]) for any domain
    proven to run on two nodes at once, ``polls`` counts the rounds."""

    def __init__(self, sim_nodes: Sequence[nodeplans.SimNode], *, every: float = 0.1) -> None:
        self.nodes = tuple(sim_nodes)
        self.every = every
        self.seen: list[tuple[str, list[str]]] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="two-copies", daemon=True)

    def _run(self) -> None:
        # Each round reads every pair as A, then B, then A again (A alternating): the
        # reads are sequential, so "running on A, then on B" is an ordinary switch-over;
        # running on A before and after a read that shows it running on B means both ran
        # at once.
        while not self._stop.is_set():
            for i, first in enumerate(self.nodes):
                for second in self.nodes[i + 1 :]:
                    a, b = (first, second) if self.polls % 2 == 0 else (second, first)
                    before, other, after = running(a), running(b), running(a)
                    for dom in before & other & after:
                        self.seen.append((dom, [a.name, b.name]))
            self.polls += 1
            self._stop.wait(self.every)

    def __enter__(self) -> TwoCopies:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
