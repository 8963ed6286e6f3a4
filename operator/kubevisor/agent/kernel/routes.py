"""Batched route programming over a raw rtnetlink socket.

Why not ``IPRoute.route("add", ...)`` per route: each call is a request-and-wait round trip
through pyroute2's generic marshalling, a few thousand routes per second. A VRF sync here
packs many ``RTM_NEWROUTE``/``RTM_DELROUTE`` messages (a fixed, tiny layout, encoded with
``struct``) into one ``sendmsg`` and asks for an ACK only on the last message of each
chunk; the kernel reports any failing message anyway (an ``NLMSG_ERROR`` carrying its
sequence number), so nothing is lost and the kernel sets the pace, like ``ip -batch``.

Routes the agent owns carry ``PROTO_KUBEVISOR`` so a dump can tell them from connected
and hand-made routes; that is what makes the diff level-based and drift repairable.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from kubevisor.agent.kernel import netnsthreads

#: rtm_protocol of routes installed by kubevisor (see /etc/iproute2/rt_protos; unused id).
PROTO_KUBEVISOR = 107

RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
NETLINK_CAP_ACK = 10
NETLINK_GET_STRICT_CHK = 12
SO_SNDBUFFORCE = 32
SOL_NETLINK = 270
SO_RCVBUFFORCE = 33

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_TABLE = 15

RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_TABLE_UNSPEC = 0
ROUTE_TYPES = {"unicast": 1, "blackhole": 6, "unreachable": 7, "prohibit": 8}
ROUTE_TYPE_NAMES = {v: k for k, v in ROUTE_TYPES.items()}

_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")
_U32ATTR = struct.Struct("=HHI")
_U32 = struct.Struct("=I")
_CHUNK_BYTES = 128 * 1024


@dataclass(frozen=True)
class KernelRoute:
    """A route as rtnetlink carries it; ``key`` is its identity inside a table."""

    dst: str
    table: int
    type: int = ROUTE_TYPES["unicast"]
    gateway: str | None = None
    oif: int | None = None
    priority: int = 0
    protocol: int = PROTO_KUBEVISOR

    @property
    def key(self) -> tuple[int, str, int]:
        """(table, prefix, metric): what the kernel matches a replace or delete on."""
        return (self.table, self.dst, self.priority)


class RouteError(OSError):
    """Some messages of a batch failed; ``failures`` pairs each route with its errno."""

    def __init__(self, failures: list[tuple[KernelRoute, int]]) -> None:
        route, code = failures[0]
        super().__init__(
            code,
            f"{len(failures)} route operation(s) failed, first {route.dst}: {os.strerror(code)}",
        )
        self.failures = failures


def _attr(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def encode(kind: int, route: KernelRoute, *, seq: int, flags: int) -> bytes:
    """One RTM_NEWROUTE/RTM_DELROUTE message."""
    network = ipaddress.ip_network(route.dst)
    family = socket.AF_INET if network.version == 4 else socket.AF_INET6
    scope = RT_SCOPE_UNIVERSE
    if route.type == ROUTE_TYPES["unicast"] and route.gateway is None:
        scope = RT_SCOPE_LINK
    table_byte = route.table if route.table < 256 else RT_TABLE_UNSPEC
    body = _RTMSG.pack(
        family, network.prefixlen, 0, 0, table_byte, route.protocol, scope, route.type, 0
    )
    body += _attr(RTA_DST, network.network_address.packed)
    body += _U32ATTR.pack(8, RTA_TABLE, route.table)
    if route.priority:
        body += _U32ATTR.pack(8, RTA_PRIORITY, route.priority)
    if route.gateway is not None:
        body += _attr(RTA_GATEWAY, ipaddress.ip_address(route.gateway).packed)
    if route.oif is not None:
        body += _U32ATTR.pack(8, RTA_OIF, route.oif)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def messages(buffer: bytes) -> Iterator[tuple[int, int, int, memoryview]]:
    """(type, flags, seq, payload) of each netlink message in a receive buffer."""
    view = memoryview(buffer)
    offset = 0
    while offset + _NLMSGHDR.size <= len(view):
        length, kind, flags, seq, _pid = _NLMSGHDR.unpack_from(view, offset)
        if length < _NLMSGHDR.size:
            break
        yield kind, flags, seq, view[offset + _NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3


def decode(payload: memoryview) -> KernelRoute | None:
    """A dumped route, or None for what VRF sync ignores (cloned/cache entries)."""
    family, dst_len, _src, _tos, table, protocol, _scope, kind, _flags = _RTMSG.unpack_from(payload)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    size = 4 if family == socket.AF_INET else 16
    dst = bytes(size)
    gateway: str | None = None
    oif: int | None = None
    priority = 0
    offset = _RTMSG.size
    while offset + _RTATTR.size <= len(payload):
        length, attr = _RTATTR.unpack_from(payload, offset)
        if length < _RTATTR.size:
            break
        data = payload[offset + _RTATTR.size : offset + length]
        if attr == RTA_DST:
            dst = bytes(data)
        elif attr == RTA_GATEWAY:
            gateway = str(ipaddress.ip_address(bytes(data)))
        elif attr == RTA_OIF:
            oif = _U32.unpack_from(data)[0]
        elif attr == RTA_PRIORITY:
            priority = _U32.unpack_from(data)[0]
        elif attr == RTA_TABLE:
            table = _U32.unpack_from(data)[0]
        offset += (length + 3) & ~3
    prefix = ipaddress.ip_network((ipaddress.ip_address(dst), dst_len))
    return KernelRoute(
        dst=str(prefix),
        table=table,
        type=kind,
        gateway=gateway,
        oif=oif,
        priority=priority,
        protocol=protocol,
    )


class RouteSocket:
    """A raw NETLINK_ROUTE socket in one network namespace, for dumps and batches.

    ``netns=None`` is the caller's namespace. Use as a context manager; not thread-safe
    (one socket per worker).
    """

    def __init__(self, netns: str | None = None) -> None:
        # opened on this thread inside the namespace: pyroute2's create_socket forks
        with netnsthreads.entered(netns):
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        for option, fallback, size in (
            (SO_SNDBUFFORCE, socket.SO_SNDBUF, 4 << 20),
            (SO_RCVBUFFORCE, socket.SO_RCVBUF, 8 << 20),
        ):
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, option, size)
            except PermissionError:
                self._sock.setsockopt(socket.SOL_SOCKET, fallback, size)
        self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self._sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        self._seq = 0

    def __enter__(self) -> RouteSocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def dump(self, *, table: int | None = None, protocol: int | None = None) -> list[KernelRoute]:
        """IPv4 and IPv6 routes, filtered in the kernel (strict dump) and again here."""
        found: list[KernelRoute] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            seq = self._next_seq()
            body = _RTMSG.pack(family, 0, 0, 0, 0, protocol or 0, 0, 0, 0)
            if table is not None:
                body += _U32ATTR.pack(8, RTA_TABLE, table)
            header = _NLMSGHDR.pack(
                _NLMSGHDR.size + len(body), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
            )
            self._sock.send(header + body)
            done = False
            while not done:
                data = self._sock.recv(1 << 20)
                for kind, _flags, mseq, payload in messages(data):
                    if mseq != seq:
                        continue
                    if kind == NLMSG_DONE:
                        done = True
                    elif kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", payload)[0]
                        if code:
                            raise OSError(code, os.strerror(code))
                        done = True
                    elif kind == RTM_NEWROUTE:
                        route = decode(payload)
                        if route is None:
                            continue
                        if table is not None and route.table != table:
                            continue
                        if protocol is not None and route.protocol != protocol:
                            continue
                        found.append(route)
        return found

    def apply(
        self,
        *,
        add: Sequence[KernelRoute] = (),
        delete: Sequence[KernelRoute] = (),
        chunk_bytes: int = _CHUNK_BYTES,
    ) -> int:
        """Delete then add (create-or-replace) routes in batches; returns operations done.

        Raises `RouteError` listing every failed operation after the whole batch ran; a
        delete of a route already gone is not a failure.
        """
        ops: list[tuple[int, int, KernelRoute]] = [(RTM_DELROUTE, NLM_F_REQUEST, r) for r in delete]
        ops += [(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE, r) for r in add]
        failures: list[tuple[KernelRoute, int]] = []
        for batch in _chunks(ops, chunk_bytes):
            failures += self._send_batch(batch)
        if failures:
            raise RouteError(failures)
        return len(ops)

    def _send_batch(
        self, batch: list[tuple[int, int, KernelRoute]]
    ) -> list[tuple[KernelRoute, int]]:
        by_seq: dict[int, tuple[int, KernelRoute]] = {}
        parts = []
        for index, (kind, flags, route) in enumerate(batch):
            seq = self._next_seq()
            last = index == len(batch) - 1
            parts.append(encode(kind, route, seq=seq, flags=flags | (NLM_F_ACK if last else 0)))
            by_seq[seq] = (kind, route)
        final = self._seq
        self._sock.send(b"".join(parts))
        failures: list[tuple[KernelRoute, int]] = []
        while True:
            data = self._sock.recv(1 << 20)
            finished = False
            for kind, _flags, seq, payload in messages(data):
                if kind != NLMSG_ERROR or seq not in by_seq:
                    continue
                code = -struct.unpack_from("=i", payload)[0]
                op, route = by_seq[seq]
                if code and not (op == RTM_DELROUTE and code == errno.ESRCH):
                    failures.append((route, code))
                if seq == final:
                    finished = True
            if finished:
                return failures


def _chunks(
    ops: Iterable[tuple[int, int, KernelRoute]], chunk_bytes: int
) -> Iterator[list[tuple[int, int, KernelRoute]]]:
    """Groups of operations whose encoding fits comfortably in one sendmsg."""
    batch: list[tuple[int, int, KernelRoute]] = []
    for op in ops:
        batch.append(op)
        if len(batch) * 80 >= chunk_bytes:
            yield batch
            batch = []
    if batch:
        yield batch


def _same(want: KernelRoute, have: KernelRoute) -> bool:
    """A dumped route satisfies a wanted one (the kernel fills in the oif of a gateway)."""
    return (
        want.key == have.key
        and want.type == have.type
        and want.gateway == have.gateway
        and (want.oif is None or want.oif == have.oif)
    )


def sync_routes(
    sock: RouteSocket,
    table: int,
    wanted: Sequence[KernelRoute],
    *,
    whole_namespace: bool,
) -> int:
    """Make the owned routes equal ``wanted``; returns how many are installed after.

    ``whole_namespace``: the namespace belongs to this VRF, so owned routes in any other
    table are stale too (a changed table id).
    """
    actual = sock.dump(table=None if whole_namespace else table, protocol=PROTO_KUBEVISOR)
    by_key = {r.key: r for r in actual}
    want_keys = {r.key for r in wanted}
    delete = [r for r in actual if r.key not in want_keys]
    add = [r for r in wanted if r.key not in by_key or not _same(r, by_key[r.key])]
    if add or delete:
        sock.apply(add=add, delete=delete)
    return len(wanted)
