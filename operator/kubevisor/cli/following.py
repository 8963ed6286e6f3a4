"""Following a long-running object from a shell: one ``Follower`` for every verb.

``kubevisor migrate`` and ``kubevisor backup`` both poll an object until it reaches a
final phase and print what changed between two looks: the phase, the reason while it is
Pending, and a progress line while it is Running (redrawn in place on a terminal, one
line per update otherwise). What differs per kind — which condition explains a wait and
how ``status.progress`` is drawn — is passed in as two pure functions, so the rendering
rules live here once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TextIO

Status = Mapping[str, Any]


def bar(percent: int | None, *, width: int = 30) -> str:
    """``[#####.....]  42%`` (pure)."""
    pct = percent or 0
    filled = round(width * pct / 100)
    return f"[{'#' * filled}{'.' * (width - filled)}] {pct:3d}%"


class Follower:
    """Prints what changed between two looks (phase, wait reason, progress).

    ``why(status)`` says why a Pending object waits (None: nothing to say yet);
    ``progress_line(status["progress"])`` draws the progress of a Running one.
    """

    def __init__(
        self,
        out: TextIO,
        *,
        tty: bool,
        why: Callable[[Status], str | None],
        progress_line: Callable[[Mapping[str, Any]], str],
    ) -> None:
        self.out = out
        self.tty = tty
        self._why = why
        self._progress_line = progress_line
        self.phase: str | None = None
        self.reason: str | None = None
        self.progress: str | None = None

    def show(self, status: Status) -> None:
        phase = status.get("phase") or "Pending"
        if phase != self.phase:
            self.end_line()
            print(f"phase {phase}", file=self.out)
            self.phase = phase
        if phase == "Pending":
            reason = self._why(status)
            if reason is not None and reason != self.reason:
                print(f"  waiting: {reason}", file=self.out)
                self.reason = reason
        if status.get("progress") and phase == "Running":
            line = self._progress_line(status["progress"])
            if line != self.progress:
                if self.tty:
                    print(f"\r{line}", end="", file=self.out, flush=True)
                else:
                    print(line, file=self.out)
                self.progress = line

    def end_line(self) -> None:
        """Finish a progress line drawn in place (before any other output)."""
        if self.tty and self.progress is not None:
            print(file=self.out)
            self.progress = None
