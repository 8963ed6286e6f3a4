"""``--profile``: py-spy profiles of a benchmark's processes, so the next slowdown is found
by looking, not guessing (issue 12).

Each profiled process gets ``py-spy record --pid`` (non-blocking: the target is never
paused) writing a raw collapsed-stack file ``<name>.txt`` (feed it to flamegraph.pl or
speedscope), and, when the run ends, ``<name>.top.txt``: the functions with the largest
share of samples (inclusive), computed here by :func:`top` (pure, unit-tested).
py-spy is a pip package (``.venv/bin/pip install py-spy``); without it ``--profile`` says
so and the benchmark runs unprofiled.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import subprocess
import sys
from pathlib import Path

RATE = 100
"""Samples per second per process."""


def py_spy() -> str | None:
    """The py-spy next to this Python (the venv's), else on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def top(raw: str, n: int = 30) -> list[tuple[float, str]]:
    """(percent of samples, frame) of the ``n`` frames seen in most samples, counting a
    frame once per stack (inclusive time). ``raw`` is py-spy's collapsed format: one
    ``frame;frame;... COUNT`` per line."""
    total = 0
    seen: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        for frame in set(stack.split(";")):
            seen[frame] += int(count)
    if total == 0:
        return []
    return [(round(100.0 * c / total, 1), f) for f, c in seen.most_common(n)]


class Profiles:
    """py-spy recorders attached to processes; :meth:`stop` ends them and writes the tops."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self.exe = py_spy()

    def attach(self, name: str, pid: int) -> bool:
        """Start recording process ``pid`` as ``name``; False when py-spy is missing."""
        if self.exe is None:
            return False
        with open(self.directory / f"{name}.log", "ab") as log:
            self._running[name] = subprocess.Popen(
                [self.exe, "record", "--pid", str(pid), "--rate", str(RATE), "--nonblocking",
                 "--format", "raw", "--output", str(self.directory / f"{name}.txt")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        return True

    def stop(self) -> list[Path]:
        """Stop every recorder (SIGINT makes py-spy write its file); the top files."""
        for proc in self._running.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        written = []
        for name, proc in self._running.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raw = self.directory / f"{name}.txt"
            if raw.exists():
                out = self.directory / f"{name}.top.txt"
                out.write_text(
                    "".join(f"{pct:5.1f}% {frame}\n" for pct, frame in top(raw.read_text()))
                )
                written.append(out)
        self._running.clear()
        return written
