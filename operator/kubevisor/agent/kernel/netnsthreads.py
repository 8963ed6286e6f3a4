"""Threads that live in the node's network namespace, for blocking socket work that must
leave from where QEMU's traffic leaves (a probe of a StorageBackend's server).

``setns(2)`` changes only the calling thread, so an executor whose every thread entered
the namespace once, at start, is a safe place for such calls; no other code ever runs
on those threads (they are never the default executor's).
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

from pyroute2 import netns


def executor(name: str | None, *, workers: int = 4) -> ThreadPoolExecutor:
    """Threads in netns ``name`` (None: the agent's own namespace)."""
    if name is None:
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reach")
    return ThreadPoolExecutor(
        max_workers=workers,
        thread_name_prefix=f"reach-{name}",
        initializer=_enter,
        initargs=(name,),
    )


def _enter(name: str) -> None:
    """Join netns ``name`` (flags=0: never create a missing one, which is setns's default)."""
    netns.setns(name, flags=0)


def tcp_connects(host: str, port: int, timeout: float) -> bool:
    """True when a TCP connection to host:port opens within ``timeout`` (blocking; run it
    on an :func:`executor` thread)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
