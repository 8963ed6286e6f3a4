"""Servers that sit on a dev cluster's fabric in a network namespace of their own — the
NAS (:mod:`.nas`) and the SAN (:mod:`.san`): the namespace and its veth on the fabric
bridge, the server started in a private mount namespace (its own ``/run``, never the
host's), a wait until it listens, and a stop that leaves no namespace behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from kubevisor.devenv import nodeplans


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def attach(cluster: str, ns: str, address: str, *, inner: str, outer: str) -> None:
    """Create netns ``ns`` with veth ``inner`` at ``address`` on the cluster's fabric
    (its peer ``outer`` enslaved to the fabric bridge)."""
    fabric = nodeplans.fabric_netns_name(cluster)
    ip("netns", "add", ns)
    ip("-n", ns, "link", "set", "lo", "up")
    ip("-n", fabric, "link", "add", outer, "type", "veth", "peer", inner, "netns", ns)
    ip("-n", fabric, "link", "set", outer, "master", nodeplans.FABRIC_BRIDGE, "up")
    prefix = nodeplans.FABRIC_NETWORK.prefixlen
    ip("-n", ns, "addr", "add", f"{address}/{prefix}", "dev", inner)
    ip("-n", ns, "link", "set", inner, "up")


def spawn(ns: str, script: Path, out: Path) -> subprocess.Popen[bytes]:
    """Run ``script`` in netns ``ns`` and a private mount namespace, in its own session
    (so :func:`stop` can end its whole process group)."""
    with open(out, "ab") as sink:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private", str(script)],
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip


def wait_listening(
    ns: str, port: int, proc: subprocess.Popen[bytes], *, timeout: float, what: str
) -> None:
    """Return once something listens on TCP ``port`` in ``ns``; raise when ``proc`` ends
    first or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited (code {proc.returncode})")
        listening = subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        if listening.strip():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not listen on {port} within {timeout} s")


def stop(pid: int, ns: str, pidfile: Path) -> None:
    """End the server's process group (TERM, then KILL after 10 s) and remove its
    namespace (its veth goes with it).

    Done means no member of the group is left, not that the leader exited: a daemon
    such as tgtd forks workers that outlive a leader which went first.
    """
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for then in (signal.SIGKILL, None):
        deadline = time.monotonic() + 10
        while _group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _group_alive(pid):
            break
        if then is None:
            raise RuntimeError(f"process group {pid} survived SIGKILL for 10 s")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, then)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    pidfile.unlink(missing_ok=True)


def _group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is left (reaping the leader if it is ours)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_leftovers(ns: str, pidfile: Path) -> None:
    """Stop the server an earlier run left (its pid file) and remove its namespace."""
    if pidfile.exists():
        try:
            os.killpg(int(pidfile.read_text().strip()), signal.SIGKILL)
        except (ProcessLookupError, ValueError, PermissionError):
            pass
        pidfile.unlink()
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
