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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import enum
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from xml.sax.saxutils import escape as xml_escape

import libvirt

from kubevisor.agent import domainxml
from kubevisor.agent.libvirt import domaincaps

logger = logging.getLogger(__name__)
T = TypeVar("T")


class HypervisorError(RuntimeError):
    """A libvirt call failed; the message carries libvirt's own text."""


class NoSuchDomain(HypervisorError):
    """The named domain does not exist (anymore)."""


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


def _wrap(exc: libvirt.libvirtError) -> HypervisorError:
    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
        return NoSuchDomain(str(exc))
    return HypervisorError(str(exc))


class Hypervisor:
    """One libvirt connection with async methods. Use ``async with`` or connect/close."""

    def __init__(self, uri: str, *, workers: int = 4) -> None:
        self.uri = uri
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="libvirt"
        )
        self._conn: libvirt.virConnect | None = None
        self._events: asyncio.Queue[DomainEvent] | None = None
        self._callback_id: int | None = None

    async def __aenter__(self) -> Hypervisor:
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except libvirt.libvirtError as exc:
            raise _wrap(exc) from exc

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None:
            raise HypervisorError(f"not connected to {self.uri}")
        return self._conn

    async def connect(self, *, events: bool = True) -> None:
        """Open the connection; with ``events``, subscribe to lifecycle events."""
        if events:
            _ensure_event_loop()
        self._conn = await self._call(libvirt.open, self.uri)
        if events:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[DomainEvent] = asyncio.Queue()
            self._events = queue

            def callback(
                _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int, _: Any
            ) -> None:
                item = DomainEvent(
                    name=dom.name(), uuid=dom.UUIDString(), event=event, detail=detail
                )
                loop.call_soon_threadsafe(queue.put_nowait, item)

            self._callback_id = await self._call(
                self.conn.domainEventRegisterAny,
                None,
                libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                callback,
                None,
            )

    async def close(self) -> None:
        """Deregister events, close the connection, stop our threads."""
        if self._conn is not None:
            conn = self._conn
            if self._callback_id is not None:
                try:
                    await self._call(conn.domainEventDeregisterAny, self._callback_id)
                except HypervisorError:
                    pass
                self._callback_id = None
            try:
                await self._call(conn.close)
            except HypervisorError:
                pass
            self._conn = None
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

    async def set_iscsi_secret(self, usage: str, value: str) -> None:
        """Define (or update) the private libvirt secret of usage type iscsi named
        ``usage`` with ``value`` (a CHAP password): the domain XML names it, so the
        password never appears in the domain's definition."""

        def run() -> None:
            try:
                secret = self.conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_ISCSI, usage)
            except libvirt.libvirtError:
                secret = self.conn.secretDefineXML(
                    "<secret ephemeral='no' private='yes'><usage type='iscsi'>"
                    f"<target>{xml_escape(usage)}</target></usage></secret>"
                )
            secret.setValue(value.encode())

        await self._call(run)

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
