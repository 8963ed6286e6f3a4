"""Test support shared by tests/ and bench/: waiting on conditions, a controller process.

Waiting is by polling a predicate against a deadline (never a bare sleep): the failure
message says what was awaited and what was last seen.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    every: float = 0.2,
    show: Callable[[], Any] | None = None,
) -> T:
    """Return the first truthy value of ``predicate()``; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        last = value
        time.sleep(every)
    seen = show() if show is not None else last
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (saw: {seen!r})")


@contextlib.contextmanager
def running_controller(
    kubeconfig: Path, *, log: Path, namespaces: Sequence[str] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """``kubevisor-controller`` as a subprocess for the duration of the block.

    Stopped with SIGTERM (SIGKILL after 30 s); the tail of its log is printed so a failing
    test shows what the controller did.
    """
    argv = [sys.executable, "-m", "kubevisor.controller.main", "--kubeconfig", str(kubeconfig)]
    for ns in namespaces:
        argv += ["--namespace", ns]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    print(f"--- controller log tail ({log}) ---")
    print(log.read_text(errors="replace")[-4000:])
