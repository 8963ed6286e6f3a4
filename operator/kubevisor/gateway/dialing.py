"""Opening the TCP connection to a desktop's VNC display.

Normally a plain asyncio connection to the VM's ``status.display`` host and port. With
``netns_template`` (the dev cluster, docs/gateway.md "Networking") the display listens on a
node's loopback inside that node's network namespace: the socket is created by a short
thread that enters the namespace (``setns`` applies to the calling thread only, so the
event loop's thread never changes namespace), and the connected socket is handed to
asyncio. A socket keeps the namespace it was created in.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

_CLONE_NEWNET = 0x40000000
_NETNS_DIR = "/run/netns"
T = TypeVar("T")


@dataclass(frozen=True)
class Dialer:
    """How to reach displays. ``netns_template`` is formatted with ``node=<nodeName>``."""

    netns_template: str | None = None
    timeout: float = 5.0

    async def open(
        self, host: str, port: int, *, node_name: str | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A stream pair to ``host:port`` (inside the node's namespace when configured)."""
        if self.netns_template is None:
            return await asyncio.wait_for(asyncio.open_connection(host, port), self.timeout)
        if not node_name:
            raise OSError("the VM reports no node, so its network namespace is unknown")
        netns = self.netns_template.format(node=node_name)
        sock = await asyncio.wait_for(
            asyncio.to_thread(_connect_in_netns, netns, host, port, self.timeout),
            self.timeout + 1,
        )
        return await asyncio.open_connection(sock=sock)

    async def open_on_bridge(
        self, address: str, port: int, *, tap: str, node_name: str | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A stream pair to an IPv6 link-local ``address`` on the bridge the VM's ``tap``
        is a port of (inside the node's namespace when configured): the scope of a
        link-local address is an interface, and the guest's NIC is reached through the
        bridge, not the tap itself."""
        netns = None
        if self.netns_template is not None:
            if not node_name:
                raise OSError("the VM reports no node, so its network namespace is unknown")
            netns = self.netns_template.format(node=node_name)

        def connect() -> socket.socket:
            index = _bridge_of(tap)
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout)
                sock.connect((address, port, 0, index))
            except BaseException:
                sock.close()
                raise
            sock.setblocking(False)
            return sock

        sock = await asyncio.wait_for(
            asyncio.to_thread(_in_netns, netns, connect), self.timeout + 1
        )
        return await asyncio.open_connection(sock=sock)


def _bridge_of(tap: str) -> int:
    """The interface index of the bridge ``tap`` is enslaved to (netlink, in the calling
    thread's network namespace)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=tap)
        if not found:
            raise OSError(f"tap {tap} does not exist on the node")
        master = ipr.get_links(found[0])[0].get_attr("IFLA_MASTER")
    if not master:
        raise OSError(f"tap {tap} is not a port of a bridge")
    return int(master)


def _connect_in_netns(netns: str, host: str, port: int, timeout: float) -> socket.socket:
    """Enter ``netns``, connect to ``host:port``, return the (non-blocking) socket."""

    def connect() -> socket.socket:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setblocking(False)
        return sock

    return _in_netns(netns, connect)


def _in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Runs ``fn`` in a worker thread of its own that entered ``netns`` first (None: no
    change). The thread is a fresh one (not the default executor's, whose threads are
    reused), so the namespace change dies with it; a socket keeps the namespace it was
    created in."""
    result: list[T | BaseException] = []

    def run() -> None:
        try:
            if netns is not None:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(os.path.join(_NETNS_DIR, netns), os.O_RDONLY)
                try:
                    if libc.setns(fd, _CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns into netns {netns}: {os.strerror(err)}")
                finally:
                    os.close(fd)
            result.append(fn())
        except BaseException as exc:  # handed to the caller
            result.append(exc)

    thread = threading.Thread(target=run, name=f"dial-{netns}", daemon=True)
    thread.start()
    thread.join()
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def close_quietly(writer: asyncio.StreamWriter) -> None:
    """Close a stream without raising (the peer may be gone already)."""
    with contextlib.suppress(Exception):
        writer.close()
