"""Threads in a network namespace: for good (an executor whose threads live in the node's
namespace, for blocking socket work that must leave from where QEMU's traffic leaves, a
probe of a StorageBackend's server) or for a moment (:func:`entered`, to open sockets
there).

``setns(2)`` changes only the calling thread, so an executor whose every thread entered
the namespace once, at start, is a safe place for such calls; no other code ever runs
on those threads (they are never the default executor's).

Why :func:`entered`: a socket keeps the namespace it was created in, and pyroute2's own
way to open one in another namespace (``IPRoute(netns=...)``, ``create_socket``) forks a
child process per socket, 3-8 ms each, which was the largest single cost of realizing a
VRF (bench/vrf.py); entering the namespace on the calling thread and back costs two
syscalls. :func:`create` makes a named namespace the same way (pyroute2's
``netns.create`` forks too).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from pyroute2 import IPRoute, netns

#: ``setns`` flag for a network namespace (linux/sched.h).
CLONE_NEWNET = 0x40000000


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


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the block with the calling thread in netns ``name`` (None: where it is), then
    put the thread back where it was (its own namespace, not the process's: a thread of
    :func:`executor` stays in its node). Never creates a missing namespace. Only for
    blocks that open sockets or touch /proc/sys/net: nothing else may run on the thread
    meanwhile, so call it on a thread of your own (the VRF realizer's worker)."""
    if name is None:
        yield
        return
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        netns.setns(name, flags=0)
        try:
            yield
        finally:
            netns.setns(back)
    finally:
        os.close(back)


def iproute(name: str | None) -> IPRoute:
    """An IPRoute whose socket lives in netns ``name`` (None: the caller's), without
    pyroute2's fork per namespace socket (see the module docstring)."""
    with entered(name):
        return IPRoute()


def create(name: str) -> None:
    """Make named netns ``name`` (as ``ip netns add``: bound under /run/netns) from the
    calling thread: unshare a new namespace for the thread, bind it, go back."""
    libc = ctypes.CDLL(None, use_errno=True)
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare for netns {name}: {os.strerror(err)}")
        try:
            netns.attach(name, "thread-self")
        finally:
            netns.setns(back)
    finally:
        os.close(back)
