"""Async adapter over one libvirt connection.

Why a dedicated executor instead of ``asyncio.to_thread``: libvirt calls can block for
seconds (a domain start under TCG, a hung libvirtd); a bounded pool of our own keeps
them from starving the default executor the Kubernetes client also uses, and
:meth:`Hypervisor.close` can wait for exactly our calls.

Lifecycle events: libvirt delivers them through its own event loop, which we run on one
daemon thread (``virEventRunDefaultImpl``); callbacks are handed to the asyncio loop with
``call_soon_threadsafe`` and queued. The agent treats events as hints to reconcile now,
never as the truth (it re-reads the state), so a lost event only delays convergence until
the next resync.

Losing libvirtd: a libvirtd that stops, crashes or restarts (a woken node, an upgrade)
closes our connection. We notice it three ways: libvirt's close callback (the socket hit
EOF), keepalive (a libvirtd that hangs stops answering pings: 5 s interval, 3 misses), and
a failed call whose connection ``isAlive()`` denies. From then on every call raises
:class:`HypervisorUnavailable` at once, and a background task reopens the connection with
capped exponential backoff (0.5 s doubling to 10 s), subscribes to events again and calls
the listeners registered with :meth:`Hypervisor.on_reconnect` (the agent looks at every
VM again and so adopts the domains the new libvirtd reports). Nothing is restarted: the
agent, its Lease and its caches stay.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import enum
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from kubevisor.agent import domainxml
from kubevisor.agent.libvirt import domaincaps
from kubevisor.agent.runtime import backoff

logger = logging.getLogger(__name__)
T = TypeVar("T")


class HypervisorError(RuntimeError):
    """A libvirt call failed; the message carries libvirt's own text."""


class NoSuchDomain(HypervisorError):
    """The named domain does not exist (anymore)."""


class HypervisorUnavailable(HypervisorError):
    """The connection to libvirtd is lost (libvirtd stopped, crashed or restarted); the
    adapter is reconnecting with backoff. Nothing about the domains is known meanwhile."""


RECONNECT_FIRST = 0.5
"""Seconds before the first attempt to reopen a lost connection (doubling)."""
RECONNECT_CAP = 10.0
"""The longest wait between attempts to reopen a lost connection."""
KEEPALIVE_INTERVAL = 5
"""Seconds between keepalive pings to libvirtd (a hung libvirtd is declared gone after
``KEEPALIVE_COUNT`` unanswered ones)."""
KEEPALIVE_COUNT = 3

_GONE_CODES = frozenset({libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN})


class DomainState(enum.StrEnum):
    """libvirt's domain states, reduced to what the agent distinguishes."""

    RUNNING = "running"
    PAUSED = "paused"
    SHUTTING_DOWN = "shutting-down"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    OTHER = "other"


_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.SHUTTING_DOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
}


@dataclasses.dataclass(frozen=True)
class DomainInfo:
    """A snapshot of one domain: enough to decide, adopt and report."""

    name: str
    uuid: str
    state: DomainState
    reason: int
    """libvirt's state reason code (e.g. VIR_DOMAIN_SHUTOFF_SHUTDOWN = guest powered off)."""
    persistent: bool
    xml: str
    """Live XML when running, else the persistent definition."""
    identity: domainxml.Identity | None
    """The VM identity from our metadata; None for domains kubevisor did not create."""

    @property
    def guest_shut_down(self) -> bool:
        """The guest powered itself off (as opposed to being destroyed or crashing)."""
        return (
            self.state is DomainState.SHUTOFF and self.reason == libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN
        )

    @property
    def failed(self) -> bool:
        """The domain died on its own: crashed, or QEMU went away / failed to start."""
        return self.state is DomainState.CRASHED or (
            self.state is DomainState.SHUTOFF
            and self.reason
            in (libvirt.VIR_DOMAIN_SHUTOFF_CRASHED, libvirt.VIR_DOMAIN_SHUTOFF_FAILED)
        )


@dataclasses.dataclass(frozen=True)
class DomainEvent:
    """A lifecycle event: which domain, and libvirt's event/detail codes."""

    name: str
    uuid: str
    event: int
    detail: int


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; ours arrive as exceptions."""


libvirt.registerErrorHandler(_quiet, None)

_event_loop_lock = threading.Lock()
_event_loop_started = False


def _ensure_event_loop() -> None:
    """Register and run libvirt's default event loop once per process (it is global)."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except libvirt.libvirtError:
                    logger.exception("libvirt event loop iteration failed")

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def _gone(conn: libvirt.virConnect, exc: libvirt.libvirtError) -> bool:
    """Whether ``exc`` means the connection itself is dead (not just the call refused)."""
    if exc.get_error_code() in _GONE_CODES:
        return True
    try:
        return not conn.isAlive()
    except libvirt.libvirtError:
        return True


def _notify(listeners: list[Callable[[], None]]) -> None:
    for listener in listeners:
        try:
            listener()
        except Exception:
            logger.exception("connection listener failed")


def _close_quietly(conn: libvirt.virConnect) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        conn.unregisterCloseCallback()
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()


def _wrap(exc: libvirt.libvirtError) -> HypervisorError:
    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
        return NoSuchDomain(str(exc))
    return HypervisorError(str(exc))


class Hypervisor:
    """One libvirt connection with async methods. Use ``async with`` or connect/close."""

    def __init__(
        self,
        uri: str,
        *,
        workers: int = 4,
        reconnect_first: float = RECONNECT_FIRST,
        reconnect_cap: float = RECONNECT_CAP,
    ) -> None:
        self.uri = uri
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="libvirt"
        )
        self._conn: libvirt.virConnect | None = None
        self._events: asyncio.Queue[DomainEvent] | None = None
        self._callback_id: int | None = None
        self._reconnect_first = reconnect_first
        self._reconnect_cap = reconnect_cap
        self._lost = asyncio.Event()
        self._reconnecting: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._lost_listeners: list[Callable[[], None]] = []
        self.lost_because = ""
        """Why the connection was lost (libvirt's words), while it is."""
        self.reconnects = 0
        """How often a lost connection was reopened (tests and benchmarks read it)."""

    async def __aenter__(self) -> Hypervisor:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        conn = self._conn
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except libvirt.libvirtError as exc:
            if conn is not None and await loop.run_in_executor(self._executor, _gone, conn, exc):
                self._mark_lost(conn, str(exc))
                raise HypervisorUnavailable(self._unavailable_text()) from exc
            raise _wrap(exc) from exc

    def _unavailable_text(self) -> str:
        return f"libvirt {self.uri} is unreachable ({self.lost_because}); reconnecting"

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None:
            if self._lost.is_set():
                raise HypervisorUnavailable(self._unavailable_text())
            raise HypervisorError(f"not connected to {self.uri}")
        return self._conn

    @property
    def available(self) -> bool:
        """Whether the connection is open (False while reconnecting)."""
        return self._conn is not None

    def on_reconnect(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (on the asyncio loop) each time a lost connection is
        reopened and subscribed to events again."""
        self._listeners.append(listener)

    def on_lost(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (on the asyncio loop) each time the connection is lost."""
        self._lost_listeners.append(listener)

    async def connect(self, *, events: bool = True) -> None:
        """Open the connection; with ``events``, subscribe to lifecycle events. A lost
        connection is reopened in the background from then on (module docstring)."""
        _ensure_event_loop()
        if events:
            self._events = asyncio.Queue()
        conn = await self._call(libvirt.open, self.uri)
        await self._attach(conn)
        self._conn = conn
        self._reconnecting = asyncio.get_running_loop().create_task(self._keep_connected())

    async def _attach(self, conn: libvirt.virConnect) -> None:
        """Subscribe a fresh connection: lifecycle events (when asked), the close callback
        and keepalive (drivers without them, like ``test:///``, are fine without)."""
        loop = asyncio.get_running_loop()
        queue = self._events

        def closed(gone: libvirt.virConnect, reason: int, _: Any) -> None:
            loop.call_soon_threadsafe(self._mark_lost, gone, f"connection closed, reason {reason}")

        def attach() -> int | None:
            try:
                conn.registerCloseCallback(closed, None)
            except libvirt.libvirtError as exc:
                logger.debug("%s: no close callback: %s", self.uri, exc)
            try:
                conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
            except libvirt.libvirtError as exc:
                logger.debug("%s: no keepalive: %s", self.uri, exc)
            if queue is None:
                return None

            def callback(
                _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int, _: Any
            ) -> None:
                item = DomainEvent(
                    name=dom.name(), uuid=dom.UUIDString(), event=event, detail=detail
                )
                loop.call_soon_threadsafe(queue.put_nowait, item)

            return int(
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, callback, None
                )
            )

        self._callback_id = await self._call(attach)

    def _mark_lost(self, conn: libvirt.virConnect, why: str) -> None:
        """``conn`` is dead: calls fail fast from now on and the reconnect task starts.
        (Only the current connection counts: a late callback of an old one is ignored.)"""
        if self._conn is not conn:
            return
        self._conn = None
        self._callback_id = None
        self.lost_because = why
        logger.warning("lost the connection to %s (%s); reconnecting", self.uri, why)
        self._lost.set()
        self._executor.submit(_close_quietly, conn)
        _notify(self._lost_listeners)

    async def _keep_connected(self) -> None:
        """Reopen the connection each time it is lost, with capped exponential backoff."""
        while True:
            await self._lost.wait()
            failures = 0
            while self._conn is None:
                try:
                    conn = await self._call(libvirt.open, self.uri)
                    await self._attach(conn)
                except HypervisorError as exc:
                    failures += 1
                    wait = backoff.delay(
                        failures, first=self._reconnect_first, cap=self._reconnect_cap
                    )
                    self.lost_because = str(exc)
                    logger.info("%s still unreachable (%s); next try in %.1fs", self.uri, exc, wait)
                    await asyncio.sleep(wait)
                    continue
                self._conn = conn
            self._lost.clear()
            self.lost_because = ""
            self.reconnects += 1
            logger.info("reconnected to %s", self.uri)
            _notify(self._listeners)

    async def close(self) -> None:
        """Deregister events, close the connection, stop our threads."""
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
            self._reconnecting = None
        if self._conn is not None:
            conn = self._conn
            self._conn = None  # a close callback fired by our own close is ignored
            if self._callback_id is not None:
                try:
                    await self._call(conn.domainEventDeregisterAny, self._callback_id)
                except HypervisorError:
                    pass
                self._callback_id = None
            await asyncio.get_running_loop().run_in_executor(self._executor, _close_quietly, conn)
        self._executor.shutdown(wait=True)

    async def next_event(self) -> DomainEvent:
        """Wait for the next lifecycle event (only after ``connect(events=True)``)."""
        if self._events is None:
            raise HypervisorError("events were not requested at connect()")
        return await self._events.get()

    # -- snapshots -------------------------------------------------------------------

    def _info(self, dom: libvirt.virDomain) -> DomainInfo:
        state, reason = dom.state()
        xml = dom.XMLDesc(0)
        return DomainInfo(
            name=dom.name(),
            uuid=dom.UUIDString(),
            state=_STATES.get(state, DomainState.OTHER),
            reason=reason,
            persistent=bool(dom.isPersistent()),
            xml=xml,
            identity=domainxml.identity_from_xml(xml),
        )

    def _lookup_info(self, name: str) -> DomainInfo | None:
        try:
            return self._info(self.conn.lookupByName(name))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _list_infos(self) -> list[DomainInfo]:
        infos = []
        for dom in self.conn.listAllDomains(0):
            try:
                infos.append(self._info(dom))
            except libvirt.libvirtError as exc:  # vanished between list and read
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        return infos

    async def lookup(self, name: str) -> DomainInfo | None:
        """The domain called ``name``, or None."""
        return await self._call(self._lookup_info, name)

    async def list(self) -> list[DomainInfo]:
        """Every domain (running or only defined)."""
        return await self._call(self._list_infos)

    async def state(self, name: str) -> DomainState:
        """Current state of ``name`` (raises NoSuchDomain)."""
        state, _ = await self._call(lambda: self.conn.lookupByName(name).state())
        return _STATES.get(state, DomainState.OTHER)

    async def cpu_models(self) -> domaincaps.CPUModels:
        """The CPU models this host runs (domain capabilities for the default emulator,
        architecture and virtualisation type); none when libvirt cannot say."""
        try:
            xml = await self._call(self.conn.getDomainCapabilities)
        except HypervisorError as exc:
            logger.warning("domain capabilities unavailable: %s", exc)
            return domaincaps.CPUModels()
        return domaincaps.parse_cpu_models(xml)

    async def hostname(self) -> str:
        """The hypervisor host's name (a cheap liveness probe of the connection)."""
        return await self._call(self.conn.getHostname)

    # -- actions ---------------------------------------------------------------------

    async def define(self, xml: str) -> DomainInfo:
        """Define (or redefine) a persistent domain from XML."""
        return await self._call(lambda: self._info(self.conn.defineXML(xml)))

    async def start(self, name: str) -> None:
        """Boot a defined, shut-off domain."""
        await self._call(lambda: self.conn.lookupByName(name).create())

    async def shutdown(self, name: str) -> None:
        """Ask the guest to power off (ACPI); returns at once, the guest may ignore it."""
        await self._call(lambda: self.conn.lookupByName(name).shutdown())

    async def destroy(self, name: str) -> None:
        """Pull the plug. A domain that is already off is not an error."""

        def run() -> None:
            dom = self.conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()

        await self._call(run)

    async def undefine(self, name: str) -> None:
        """Remove the definition (with NVRAM/managed save and backup checkpoints' metadata);
        a missing domain is fine."""

        def run() -> None:
            try:
                dom = self.conn.lookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return
                raise
            flags = (
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
            )
            try:
                dom.undefineFlags(flags)
            except libvirt.libvirtError:
                dom.undefine()

        await self._call(run)

    async def suspend(self, name: str) -> None:
        """Pause the vCPUs (memory stays)."""
        await self._call(lambda: self.conn.lookupByName(name).suspend())

    async def resume(self, name: str) -> None:
        """Continue a paused domain."""
        await self._call(lambda: self.conn.lookupByName(name).resume())
