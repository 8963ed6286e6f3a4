"""A routing daemon's processes as /proc shows them, and the files it leaves (blocking).

Shared by the supervisor (`supervising`) and the per-daemon adapters (`bird`, `frr`): a
pid file is only believed when ``/proc/PID/cmdline`` says the process is this VRF's
daemon (so a reused pid is never mistaken for it), and a zombie counts as gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from kubevisor.agent.vrfs import daemons

#: Whether a process's argv is this VRF's daemon (`bird.is_ours`, `frr.is_ours`).
IsOurs = Callable[[list[str], daemons.Files], bool]


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid`` (empty when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def zombie(pid: int) -> bool:
    """Whether ``pid`` is gone or a zombie (dead, not yet reaped)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return text.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def read(path: Path) -> str | None:
    """A file's text, or None when it is not there."""
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None


def pid_in(pid_file: Path) -> int | None:
    """The number in a pid file, or None."""
    try:
        return int((read(pid_file) or "").strip())
    except ValueError:
        return None


def find_pid(f: daemons.Files, is_ours: IsOurs) -> int | None:
    """The pid of this VRF's live daemon, from its pid file checked against /proc."""
    pid = pid_in(f.pid_file)
    if pid is not None and is_ours(cmdline(pid), f) and not zombie(pid):
        return pid
    return None


def tail(path: Path, lines: int = 3) -> str | None:
    """The last lines of a log, joined into one line (None when it is empty)."""
    text = read(path)
    if not text:
        return None
    return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:])


#: Timeout of one parser, reload or show call.
TOOL_TIMEOUT = 30.0


def ask(argv: list[str], cwd: Path) -> str | None:
    """One show command over a daemon's control socket (``birdc``, ``vtysh``): its
    output, or None when it could not run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def wait_started(f: daemons.Files, process: subprocess.Popen[bytes], *, timeout: float) -> bool:
    """Whether the daemon opened its control socket and wrote its pid file before exiting
    or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if stat.S_ISSOCK(os.stat(f.socket).st_mode) and f.pid_file.exists():
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.02)  # polling a condition with a deadline
    return False


def stop(pid: int | None, child: subprocess.Popen[bytes] | None, *, timeout: float) -> None:
    """SIGTERM ``pid``, SIGKILL it after ``timeout``; reap ``child`` (the agent's own
    child, when the daemon is one)."""
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child is not None and child.pid == pid:
                if child.poll() is not None:
                    break
            elif zombie(pid):
                break
            time.sleep(0.02)  # polling a condition with a deadline
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=timeout)
