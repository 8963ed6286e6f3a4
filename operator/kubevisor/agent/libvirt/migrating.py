"""Live migration through libvirt: a pure builder from the Migration policy to libvirt's
flags and typed parameters, a pure converter from job statistics to the API's progress
and final figures, and thin async adapters that start a peer-to-peer migration, sample
its job, switch it to post-copy and abort it.

Why the long call gets its own threads: ``migrateToURI3`` blocks for the whole
migration (seconds to minutes). Run on the :class:`~.hypervisor.Hypervisor`'s small pool
it would hold a worker the agent's reconcile loop needs; the job queries (stats, abort,
post-copy switch) must run *while* it blocks, so they get a second small pool. libvirt
connections are thread-safe, so both pools share the hypervisor's connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import libvirt

from kubevisor.agent.libvirt import hypervisor
from kubevisor.api import migrations

T = TypeVar("T")

#: libvirt's unit for the bandwidth parameter is MiB/s, the policy's too.
_BANDWIDTH: Final = libvirt.VIR_MIGRATE_PARAM_BANDWIDTH
#: Always: live, source libvirtd talks to the target's, the domain ends up defined there
#: and not on the source (one copy, one definition).
BASE_FLAGS: Final = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
)

_long_calls = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="migrate")
_job_calls = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="migjob")


#: libvirt job types of a job that still runs.
ACTIVE_JOB_TYPES: Final = frozenset(
    {libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED}
)


class MigrationError(hypervisor.HypervisorError):
    """A migration call failed; the message carries libvirt's text."""


@dataclasses.dataclass(frozen=True)
class MigrationRequest:
    """What :func:`migrate` hands libvirt: ``migrateToURI3(uri, params, flags)`` plus the
    downtime limit, which libvirt takes through ``migrateSetMaxDowntime``."""

    flags: int
    params: Mapping[str, Any]
    max_downtime_ms: int
    post_copy: bool
    """POSTCOPY was requested: :func:`start_post_copy` may switch the running job."""


def build(
    policy: migrations.MigrationPolicy,
    *,
    shared_storage: bool,
    local_disks: Sequence[str] = (),
    migrate_uri: str | None = None,
    management_address: str | None = None,
) -> MigrationRequest:
    """Flags and parameters for ``policy`` (pure).

    ``shared_storage``: every disk not in ``local_disks`` lives on storage both nodes
    mount; libvirt 9 trusts only cluster filesystems as shared, so we pass UNSAFE to say we
    know (docs/dev/simulated-nodes.md, "Migration notes"). ``local_disks``: target device
    names (``vda``) of node-local disks; they are block-copied incrementally
    (NON_SHARED_INC: only the overlay moves, the target agent has put the base image in
    place), which the policy must allow. ``migrate_uri``: the address the memory stream
    uses when it is not the one the target's libvirtd advertises. ``management_address``:
    the target's management interface: the memory stream (and a block copy's NBD) goes
    there, and the target's QEMU listens there, whatever its qemu.conf says — so a
    migration never crosses the VMs' LANs.
    """
    if local_disks and not policy.allow_block_copy:
        raise ValueError(
            f"disks {', '.join(local_disks)} are node-local and policy.allowBlockCopy is false"
        )
    flags = BASE_FLAGS
    params: dict[str, Any] = {}
    if shared_storage:
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    if policy.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if policy.post_copy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if local_disks:
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(local_disks)
    if policy.bandwidth_mi_bps is not None:
        params[_BANDWIDTH] = policy.bandwidth_mi_bps
    if management_address:
        migrate_uri = migrate_uri or f"tcp://{_uri_host(management_address)}"
        params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = management_address
    if migrate_uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = migrate_uri
    return MigrationRequest(
        flags=flags,
        params=params,
        max_downtime_ms=policy.max_downtime_ms,
        post_copy=policy.post_copy,
    )


def _uri_host(address: str) -> str:
    """An address as a URI's host part (IPv6 in brackets)."""
    return f"[{address}]" if ":" in address else address


#: libvirt's reasons for a domain a migration paused (the final copy round, post-copy).
MIGRATION_PAUSE_REASONS: Final = frozenset(
    {libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY}
)


def paused_by_migration(domain: hypervisor.DomainInfo) -> bool:
    """Whether libvirt paused the domain for a migration (pure): the VM loop must not
    resume it (the job holds it; a resume waits for the job, then meets no domain)."""
    return (
        domain.state is hypervisor.DomainState.PAUSED and domain.reason in MIGRATION_PAUSE_REASONS
    )


def _int(stats: Mapping[str, Any], key: str) -> int | None:
    value = stats.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(int(value), 0)


def progress(stats: Mapping[str, Any], *, now: datetime) -> migrations.MigrationProgress:
    """The API's progress from a ``jobStats()`` dict (pure).

    libvirt reports the dirty rate in pages per second: times ``memory_page_size``
    (4 KiB when absent) gives bytes. The transfer rate is memory plus disk throughput.
    Percent is (total - remaining) over total — not processed over total: QEMU skips zero
    pages without sending them, so "processed" stays far below the total of an idle guest
    (measured: 32 % processed with nothing remaining) — floored and capped at 99 until the
    job has ended (the total grows while pages dirty, so 100 would be a lie). The ETA is remaining
    bytes over the transfer rate, unset while the rate is unknown or zero.
    """
    total = _int(stats, libvirt.VIR_DOMAIN_JOB_DATA_TOTAL)
    processed = _int(stats, libvirt.VIR_DOMAIN_JOB_DATA_PROCESSED)
    remaining = _int(stats, libvirt.VIR_DOMAIN_JOB_DATA_REMAINING)
    pages = _int(stats, libvirt.VIR_DOMAIN_JOB_MEMORY_DIRTY_RATE)
    page_size = _int(stats, libvirt.VIR_DOMAIN_JOB_MEMORY_PAGE_SIZE) or 4096
    memory_bps = _int(stats, libvirt.VIR_DOMAIN_JOB_MEMORY_BPS)
    disk_bps = _int(stats, libvirt.VIR_DOMAIN_JOB_DISK_BPS)
    rate = None if memory_bps is None and disk_bps is None else (memory_bps or 0) + (disk_bps or 0)
    finished = stats.get("type") == libvirt.VIR_DOMAIN_JOB_COMPLETED
    percent = None
    done = None if total is None else total - remaining if remaining is not None else processed
    if total and done is not None:
        percent = min(max(done, 0) * 100 // total, 100 if finished else 99)
    elif finished:
        percent = 100
    eta = None
    if remaining is not None and rate:
        eta = -(-remaining // rate)  # ceiling: "1 s left" until it is really done
    return migrations.MigrationProgress(
        data_total_bytes=total,
        data_processed_bytes=processed,
        data_remaining_bytes=remaining,
        memory_iterations=_int(stats, libvirt.VIR_DOMAIN_JOB_MEMORY_ITERATION),
        dirty_rate_bytes_per_second=None if pages is None else pages * page_size,
        transfer_rate_bytes_per_second=rate,
        percent=percent,
        eta_seconds=eta,
        elapsed_ms=_int(stats, libvirt.VIR_DOMAIN_JOB_TIME_ELAPSED),
        updated_at=now,
    )


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The final figures of a completed migration, as the status records them."""

    total_time_ms: int | None
    downtime_ms: int | None
    bytes_transferred: int | None
    mode: migrations.MigrationMode


def outcome(stats: Mapping[str, Any], *, switched_to_post_copy: bool) -> Outcome:
    """Final figures from the completed job's stats (``jobStats(COMPLETED)`` on the
    target) (pure). ``switched_to_post_copy``: whether :func:`start_post_copy` ran — libvirt's
    stats do not say which mode finished the job."""
    return Outcome(
        total_time_ms=_int(stats, libvirt.VIR_DOMAIN_JOB_TIME_ELAPSED),
        downtime_ms=_int(stats, libvirt.VIR_DOMAIN_JOB_DOWNTIME),
        bytes_transferred=_int(stats, libvirt.VIR_DOMAIN_JOB_DATA_PROCESSED),
        mode=(
            migrations.MigrationMode.POST_COPY
            if switched_to_post_copy
            else migrations.MigrationMode.PRE_COPY
        ),
    )


# -- adapters ------------------------------------------------------------------------


async def _run(pool: concurrent.futures.Executor, fn: Callable[..., T], *args: Any) -> T:
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(pool, functools.partial(fn, *args))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise hypervisor.NoSuchDomain(str(exc)) from exc
        raise MigrationError(str(exc)) from exc


async def migrate(
    hv: hypervisor.Hypervisor, name: str, *, dest_uri: str, request: MigrationRequest
) -> None:
    """Run a peer-to-peer live migration of ``name`` to the libvirtd at ``dest_uri`` and
    return when it has finished (raises :class:`MigrationError` when libvirt gives up or
    the job is aborted). The downtime limit is set first; libvirt keeps it for the job."""

    def run() -> None:
        dom = hv.conn.lookupByName(name)
        dom.migrateSetMaxDowntime(request.max_downtime_ms, 0)
        dom.migrateToURI3(dest_uri, dict(request.params), request.flags)

    await _run(_long_calls, run)


async def migratable_xml(hv: hypervisor.Hypervisor, name: str) -> str:
    """``name``'s live XML as libvirt migrates it (with secrets: the VNC password moves)."""
    flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE
    return await _run(_job_calls, lambda: str(hv.conn.lookupByName(name).XMLDesc(flags)))


def with_destination_xml(request: MigrationRequest, xml: str) -> MigrationRequest:
    """``request`` carrying the domain XML the destination starts (pure)."""
    params = {**request.params, libvirt.VIR_MIGRATE_PARAM_DEST_XML: xml}
    return dataclasses.replace(request, params=params)


async def job_stats(
    hv: hypervisor.Hypervisor, name: str, *, completed: bool = False
) -> dict[str, Any]:
    """``name``'s current job statistics (``type`` NONE when no job runs); with
    ``completed``, the last finished job's (on the target after a migration)."""
    flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED if completed else 0
    return await _run(_job_calls, lambda: dict(hv.conn.lookupByName(name).jobStats(flags)))


async def start_post_copy(hv: hypervisor.Hypervisor, name: str) -> None:
    """Switch the running migration of ``name`` to post-copy (needs POSTCOPY in flags)."""
    await _run(_job_calls, lambda: hv.conn.lookupByName(name).migrateStartPostCopy(0))


async def abort(hv: hypervisor.Hypervisor, name: str) -> None:
    """Abort ``name``'s running job; :func:`migrate` then raises and the guest stays on the
    source. Not possible once post-copy has started (libvirt refuses)."""
    await _run(_job_calls, lambda: hv.conn.lookupByName(name).abortJob())


class CompletedJob:
    """The statistics libvirt's JOB_COMPLETED event carries for one domain on this node.

    Why: after post-copy the destination keeps no completed job (``domjobinfo
    --completed`` there says None — seen here), and with UNDEFINE_SOURCE the source's
    domain is gone when the call returns; the event, delivered on the source as the job
    ends, is the one place the final figures remain. Needs the connection's event loop
    (``Hypervisor.connect(events=True)``, the agent's default)."""

    def __init__(self, hv: hypervisor.Hypervisor, name: str) -> None:
        self.hv = hv
        self.name = name
        self._done: asyncio.Future[dict[str, Any]] | None = None
        self._id: int | None = None

    async def __aenter__(self) -> CompletedJob:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._done = done

        def deliver(stats: dict[str, Any]) -> None:
            if not done.done():
                done.set_result(stats)

        def callback(_c: Any, _d: Any, params: dict[str, Any], _o: Any) -> None:
            loop.call_soon_threadsafe(deliver, dict(params))

        def register() -> int:
            dom = self.hv.conn.lookupByName(self.name)
            return int(self.hv.conn.domainEventRegisterAny(
                dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, callback, None))  # fmt: skip

        self._id = await _run(_job_calls, register)
        return self

    async def stats(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """The completed job's statistics; empty when no event came within ``timeout_s``."""
        assert self._done is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._done), timeout_s)
        except TimeoutError:
            return {}

    async def __aexit__(self, *exc: object) -> None:
        if self._id is not None:
            event_id, self._id = self._id, None
            try:
                await _run(_job_calls, self.hv.conn.domainEventDeregisterAny, event_id)
            except hypervisor.HypervisorError:
                pass


async def migrate_with_progress(
    hv: hypervisor.Hypervisor,
    name: str,
    *,
    dest_uri: str,
    request: MigrationRequest,
    on_progress: Callable[[migrations.MigrationProgress], Awaitable[None]],
    interval_s: float = 1.0,
) -> None:
    """:func:`migrate`, sampling the job every ``interval_s`` (the status is written about
    once a second, no faster) and handing each sample to ``on_progress`` while it runs.
    Cancelling it aborts the libvirt job."""
    task = asyncio.ensure_future(migrate(hv, name, dest_uri=dest_uri, request=request))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval_s)
            if done:
                break
            try:
                stats = await job_stats(hv, name)
            except hypervisor.HypervisorError:
                continue  # the domain left between the wait and the query
            if stats.get("type") in ACTIVE_JOB_TYPES:
                await on_progress(progress(stats, now=datetime.now(UTC)))
    except BaseException:
        # Cancelled (or on_progress failed): the thread cannot be interrupted, the libvirt
        # job can — abort it so the guest stays on the source, then wait for the thread.
        if not task.done():
            try:
                await abort(hv, name)
            except hypervisor.HypervisorError:
                pass  # finished or failed meanwhile; the task says which
            await asyncio.wait({task})
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: the caller's exception is the one that counts
        raise
    await task
