"""The agent's Migration loop: both roles of this node, wired to libvirt and the API.

Keys are Migrations, from two informers narrowed by the controller's labels (this node as
source, this node as target); a runtime :class:`WorkLoop` runs one pass per key, which
reads the Migration, the VM (from the VM side's caches) and libvirt, asks the pure plans
(:mod:`.sourcing`, :mod:`.targeting`) what to do, acts, and applies its role's status
fields (:mod:`.reporting`, one field manager per role).

Why the roles split the final figures: with ``UNDEFINE_SOURCE`` the source's domain is
gone when the job ends, and libvirt keeps the completed job's statistics on the
destination only, so the target reports ``totalTimeMs``/``downtimeMs``/``bytesTransferred``
when it sees the domain run there; the source reports the mode (it knows whether it
switched to post-copy), the start and the progress.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydantic

from kubevisor.agent import disks, domainxml, reconciling, segmenting, segments
from kubevisor.agent.kube import ApiClient
from kubevisor.agent.libvirt import Hypervisor, HypervisorError, migrating
from kubevisor.agent.libvirt.hypervisor import DomainState
from kubevisor.agent.migrations import reporting, sourcing, targeting, watching
from kubevisor.agent.runtime import informing, looping
from kubevisor.agent.vms import placing
from kubevisor.api import groups, machines, migrations, naming, nodes

logger = logging.getLogger(__name__)

Key = informing.Key
Reason = migrations.MigrationReason
#: Every Migration of this node is looked at this often even without events.
TICK_SECONDS = 5.0


def _now() -> datetime:
    return datetime.now(UTC)


def local_disk_targets(machine: machines.MachineSpec) -> list[str]:
    """Target device names (``vda``...) of the machine's node-local disks, numbered per
    bus as the domain XML numbers them (pure)."""
    per_bus: dict[str, int] = {}
    out: list[str] = []
    for disk in machine.disks:
        index = per_bus.get(disk.bus, 0)
        per_bus[disk.bus] = index + 1
        if disk.storage != "shared":
            out.append(domainxml.target_dev(disk.bus, index))
    return out


def _identity(vm_obj: dict[str, Any]) -> domainxml.Identity:
    """The VM's identity as its disks and domain are named after it."""
    meta = vm_obj.get("metadata") or {}
    return domainxml.Identity(namespace=str(meta.get("namespace")),
                              name=str(meta.get("name")), uid=str(meta.get("uid")))  # fmt: skip


@dataclasses.dataclass
class SourceOwn:
    """The source's fields as last applied (SSA: every apply sends all of them)."""

    report: migrations.SourceReport | None = None
    started_at: datetime | None = None
    progress: migrations.MigrationProgress | None = None
    mode: migrations.MigrationMode | None = None
    outcome: migrating.Outcome | None = None
    """The final figures, after post-copy only (see ``migrations.FIGURE_FIELDS``)."""


@dataclasses.dataclass
class TargetOwn:
    """The target's fields as last applied."""

    report: migrations.TargetReport | None = None
    outcome: migrating.Outcome | None = None


@dataclasses.dataclass
class Drive:
    """A migration this process runs (or adopted)."""

    task: asyncio.Task[None]
    abort_reason: Reason | None = None
    last_progress: float | None = None
    samples: list[migrations.MigrationProgress] = dataclasses.field(default_factory=list)
    switched: bool = False


class MigrationHandler:
    """Runs the Migration passes of one node (see module docstring).

    ``vm``: the VM object by key from the VM side's caches (placed or incoming);
    ``peers``: the other nodes' Leases (for the target's migration URI);
    ``sync_segments``: re-declare the VMs' segments (prunes what nobody needs).
    """

    def __init__(
        self,
        api: ApiClient,
        hypervisor: Hypervisor,
        *,
        node: str,
        layout: disks.Layout,
        networks: dict[str, str],
        managed_networks: frozenset[str],
        node_segments: segmenting.NodeSegments,
        vm: Callable[[Key], dict[str, Any] | None],
        peers: Callable[[], Awaitable[list[nodes.NodeLease]]],
        sync_segments: Callable[[], Awaitable[None]],
        workers: int = 2,
    ) -> None:
        self.hv = hypervisor
        self.node = node
        self.layout = layout
        self.networks = networks
        self.managed = managed_networks
        self.node_segments = node_segments
        self.vm = vm
        self.peers = peers
        self.sync_segments = sync_segments
        self.loop = looping.WorkLoop(self._pass, workers=workers)
        self.sources = watching.informer(
            api, watching.Role.SOURCE, node=node, on_change=self.loop.enqueue
        )
        self.targets = watching.informer(
            api, watching.Role.TARGET, node=node, on_change=self.loop.enqueue
        )
        self.source_writer = watching.writer(api, watching.Role.SOURCE)
        self.target_writer = watching.writer(api, watching.Role.TARGET)
        self._source_own: dict[Key, SourceOwn] = {}
        self._target_own: dict[Key, TargetOwn] = {}
        self._drives: dict[Key, Drive] = {}
        self._prepared: set[Key] = set()
        self._outcome_tries: dict[Key, int] = {}
        self._created: dict[Key, list[Any]] = {}
        """Disk files the target created for a migration (only these are removed)."""

    # -- wiring ---------------------------------------------------------------------------

    def _keys(self) -> list[Key]:
        return [*self.sources.cache, *self.targets.cache]

    def vm_changed(self, vm_key: Key) -> None:
        """A domain event or VM change: look at the Migrations of that VM now."""
        for cache in (self.sources.cache, self.targets.cache):
            for key, obj in list(cache.items()):
                spec = obj.get("spec") or {}
                if key[0] == vm_key[0] and spec.get("vmName") == vm_key[1]:
                    self.loop.enqueue(key)

    async def run(self) -> None:
        """Informers, workers and the tick, until cancelled (running drives are aborted
        by their cancellation: the guest stays on the source)."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.sources.run())
                group.create_task(self.targets.run())
                group.create_task(self.loop.run())
                group.create_task(self.loop.tick(TICK_SECONDS, self._keys))
        finally:
            for drive in self._drives.values():
                drive.task.cancel()

    async def _pass(self, key: Key) -> None:
        source = self.sources.cache.get(key)
        if source is not None:
            await self._source_pass(key, source)
        else:
            self._source_own.pop(key, None)
        target = self.targets.cache.get(key)
        if target is not None:
            await self._target_pass(key, target)
        else:
            self._target_own.pop(key, None)
            self._prepared.discard(key)

    # -- shared reads ---------------------------------------------------------------------

    @staticmethod
    def _parse(key: Key, obj: dict[str, Any]) -> migrations.Migration | None:
        try:
            return migrations.Migration.model_validate(obj)
        except pydantic.ValidationError as exc:
            logger.warning("%s/%s: Migration unreadable: %s", *key, exc)
            return None

    def _machine(self, vm_obj: dict[str, Any] | None) -> machines.MachineSpec | None:
        raw = ((vm_obj or {}).get("status") or {}).get("machine")
        if raw is None:
            return None
        try:
            return machines.MachineSpec.model_validate(raw)
        except pydantic.ValidationError:
            return None

    # -- source ---------------------------------------------------------------------------

    def _source_state(self, key: Key, mig: migrations.Migration) -> SourceOwn:
        own = self._source_own.get(key)
        if own is None:
            st = mig.status or migrations.MigrationStatus()
            report = st.source if st.source is not None and st.source.node == self.node else None
            own = SourceOwn(report=report, started_at=st.started_at, progress=st.progress,
                            mode=st.mode)  # fmt: skip
            self._source_own[key] = own
        return own

    async def _apply_source(self, key: Key, own: SourceOwn) -> None:
        if own.report is None:
            return
        body = reporting.source_fields(
            own.report,
            started_at=own.started_at,
            progress=own.progress,
            mode=own.mode,
            outcome=own.outcome,
        )
        await self.source_writer.apply(namespace=key[0], name=key[1], own=body)

    async def _report_source(
        self, key: Key, mig: migrations.Migration, report: sourcing.Report
    ) -> None:
        own = self._source_state(key, mig)
        own.report = migrations.SourceReport(
            node=self.node,
            state=report.state,
            reason=report.reason.value if report.reason is not None else None,
            message=report.message,
            time=_now(),
        )
        await self._apply_source(key, own)
        logger.info("%s/%s: source %s %s", *key, report.state, report.message or "")

    async def _job_active(self, domain: str) -> bool:
        try:
            stats = await migrating.job_stats(self.hv, domain)
        except HypervisorError:
            return False
        return stats.get("type") in migrating.ACTIVE_JOB_TYPES

    async def _source_pass(self, key: Key, obj: dict[str, Any]) -> None:
        mig = self._parse(key, obj)
        if mig is None:
            return
        st = mig.status or migrations.MigrationStatus()
        own = self._source_state(key, mig)
        domain = naming.domain_name(key[0], mig.spec.vm_name)
        info = await self.hv.lookup(domain)
        active = None if info is None else reconciling.DomainView(info.state).active
        drive = self._drives.get(key)
        driving = drive is not None and not drive.task.done()
        timeout = timedelta(seconds=mig.spec.policy.completion_timeout_seconds)
        started = own.started_at or st.started_at
        observed = sourcing.Observed(
            node=self.node,
            phase=st.phase.value if st.phase is not None else None,
            reported=own.report.state.value if own.report is not None else None,
            cancel=mig.spec.cancel,
            deleting=mig.metadata.deletion_timestamp is not None,
            timed_out=started is not None and _now() - started > timeout,
            driving=driving,
            domain_active=active,
            job_active=info is not None and not driving and await self._job_active(domain),
        )
        plan = sourcing.decide(observed)
        if plan.action is sourcing.Action.START:
            target = await self._target_uri(st.target_node)
            if isinstance(target, sourcing.Report):
                await self._report_source(key, mig, target)
                return
            own.started_at = _now()
            await self._report_source(key, mig, plan.report or sourcing.Report(
                sourcing.State.MIGRATING))  # fmt: skip
            self._start_drive(key, mig, domain, target)
            return
        if plan.report is not None:
            await self._report_source(key, mig, plan.report)
        if plan.action is sourcing.Action.ABORT:
            await self._abort(key, mig, domain, plan.abort_reason or Reason.CANCELLED)
        elif plan.action is sourcing.Action.ADOPT and key not in self._drives:
            self._adopt(key, mig, domain)

    async def _target_uri(self, target: str | None) -> nodes.Capacity | sourcing.Report:
        """The target's capacity (its migration URI and address) from its Lease, or the
        Failed report saying why not."""
        for peer in await self.peers():
            if peer.name == target and peer.capacity.migration_uri:
                return peer.capacity
        return sourcing.Report(
            sourcing.State.FAILED,
            Reason.MIGRATION_URI_MISSING,
            f"node {target} publishes no migrationURI in its Lease; nothing to migrate to",
        )

    def _start_drive(
        self, key: Key, mig: migrations.Migration, domain: str, dest: nodes.Capacity
    ) -> None:
        vm_obj = self.vm((key[0], mig.spec.vm_name))
        machine = self._machine(vm_obj)
        local = local_disk_targets(machine) if machine is not None else []
        paths = self._block_copy_paths(vm_obj, machine, dest) if local else {}
        holder: dict[str, Drive] = {}

        async def run() -> None:
            await self._drive(key, mig, domain, dest, local, paths, holder["drive"])

        task = asyncio.create_task(run())
        drive = Drive(task=task)
        holder["drive"] = drive
        self._drives[key] = drive

    def _block_copy_paths(
        self,
        vm_obj: dict[str, Any] | None,
        machine: machines.MachineSpec | None,
        dest: nodes.Capacity,
    ) -> dict[str, str]:
        """Where the node-local disks go on the target (its published state directory);
        empty when the target publishes none (then the paths stay, which is right for
        nodes that keep their state at the same path)."""
        if machine is None or vm_obj is None or dest.local_storage is None:
            return {}
        return disks.block_copy_paths(
            machine, _identity(vm_obj), self.layout, Path(dest.local_storage)
        )

    async def _drive(
        self,
        key: Key,
        mig: migrations.Migration,
        domain: str,
        dest: nodes.Capacity,
        local: list[str],
        disk_paths: dict[str, str],
        drive: Drive,
    ) -> None:
        """Run the libvirt migration; report Completed, Failed or Aborted at the end."""
        policy = mig.spec.policy
        own = self._source_state(key, mig)

        async def on_progress(sample: migrations.MigrationProgress) -> None:
            drive.samples.append(sample)
            if sourcing.should_switch_post_copy(
                policy.post_copy, drive.samples, switched=drive.switched
            ):
                try:
                    await migrating.start_post_copy(self.hv, domain)
                    drive.switched = True
                    logger.info("%s/%s: switched to post-copy", *key)
                except HypervisorError as exc:
                    logger.warning("%s/%s: post-copy switch refused: %s", *key, exc)
            now = time.monotonic()
            if sourcing.progress_due(drive.last_progress, now):
                drive.last_progress = now
                own.progress = sample
                await self._apply_source(key, own)

        outcome: sourcing.Report
        try:
            request = migrating.build(policy, shared_storage=True, local_disks=local)
            xml = domainxml.for_destination(
                await migrating.migratable_xml(self.hv, domain),
                display_address=dest.address,
                disk_paths=disk_paths,
            )
            request = migrating.with_destination_xml(request, xml)
            assert dest.migration_uri is not None
            async with migrating.CompletedJob(self.hv, domain) as completed:
                await migrating.migrate_with_progress(
                    self.hv,
                    domain,
                    dest_uri=dest.migration_uri,
                    request=request,
                    on_progress=on_progress,
                )
                if drive.switched:  # the destination keeps no figures after post-copy
                    stats = await completed.stats()
                    own.outcome = migrating.outcome(stats, switched_to_post_copy=True)
        except asyncio.CancelledError:
            reason = drive.abort_reason or Reason.CANCELLED
            outcome = sourcing.Report(
                sourcing.State.ABORTED, reason, f"aborted ({reason}); the VM keeps running on "
                f"{self.node}")  # fmt: skip
        except (HypervisorError, ValueError) as exc:
            if drive.abort_reason is not None:
                reason = drive.abort_reason
                outcome = sourcing.Report(
                    sourcing.State.ABORTED, reason,
                    f"aborted ({reason}); the VM keeps running on {self.node}")  # fmt: skip
            else:
                outcome = sourcing.Report(
                    sourcing.State.FAILED, sourcing.failure_reason(str(exc)), str(exc)[:4000]
                )
        else:
            own.mode = (
                migrations.MigrationMode.POST_COPY
                if drive.switched
                else migrations.MigrationMode.PRE_COPY
            )
            outcome = sourcing.Report(sourcing.State.COMPLETED)
            await self._drop_block_copied(key, disk_paths)
        try:
            await self._report_source(key, mig, outcome)
        finally:
            self.loop.enqueue(key)

    async def _drop_block_copied(self, key: Key, disk_paths: dict[str, str]) -> None:
        """After a block copy succeeded the guest runs from the target's copies; this
        node's copies are stale (a later migration back would mirror into them), so they
        go, as a move (``mv``) leaves no source. Only paths that differ from the
        target's: nodes sharing one filesystem at the same path hold one file."""
        stale = [Path(src) for src, dst in disk_paths.items() if src != dst]
        removed = await asyncio.to_thread(disks.remove, stale)
        if removed:
            logger.info("%s/%s: removed the source copies %s", *key, [str(p) for p in removed])

    def _adopt(self, key: Key, mig: migrations.Migration, domain: str) -> None:
        """A job this process did not start (the agent restarted): sample it until it ends,
        then the next pass decides from what libvirt shows."""
        own = self._source_state(key, mig)
        holder: dict[str, Drive] = {}

        async def run() -> None:
            drive = holder["drive"]
            try:
                while True:
                    try:
                        stats = await migrating.job_stats(self.hv, domain)
                    except HypervisorError:
                        break
                    if stats.get("type") not in migrating.ACTIVE_JOB_TYPES:
                        break
                    now = time.monotonic()
                    if sourcing.progress_due(drive.last_progress, now):
                        drive.last_progress = now
                        own.progress = migrating.progress(stats, now=_now())
                        await self._apply_source(key, own)
                    await asyncio.sleep(1.0)  # the libvirt job's sampling period
            finally:
                self._drives.pop(key, None)
                self.loop.enqueue(key)

        drive = Drive(task=asyncio.create_task(run()))
        holder["drive"] = drive
        self._drives[key] = drive
        logger.info("%s/%s: adopted the running migration job of %s", *key, domain)

    async def _abort(
        self, key: Key, mig: migrations.Migration, domain: str, reason: Reason
    ) -> None:
        drive = self._drives.get(key)
        if drive is not None and not drive.task.done():
            drive.abort_reason = reason
            try:
                await migrating.abort(self.hv, domain)
            except HypervisorError as exc:
                logger.info("%s/%s: abort: %s", *key, exc)
            return  # the drive reports Aborted when libvirt gives up the job
        try:
            await migrating.abort(self.hv, domain)
        except HypervisorError as exc:
            logger.info("%s/%s: abort: %s", *key, exc)
        await self._report_source(key, mig, sourcing.Report(
            sourcing.State.ABORTED, reason,
            f"aborted ({reason}); the VM keeps running on {self.node}"))  # fmt: skip

    # -- target ---------------------------------------------------------------------------

    def _target_state(self, key: Key, mig: migrations.Migration) -> TargetOwn:
        own = self._target_own.get(key)
        if own is None:
            st = mig.status or migrations.MigrationStatus()
            report = st.target if st.target is not None and st.target.node == self.node else None
            outcome = None
            if st.total_time_ms is not None or st.downtime_ms is not None:
                outcome = migrating.Outcome(
                    total_time_ms=st.total_time_ms,
                    downtime_ms=st.downtime_ms,
                    bytes_transferred=st.bytes_transferred,
                    mode=st.mode or migrations.MigrationMode.PRE_COPY,
                )
            own = TargetOwn(report=report, outcome=outcome)
            self._target_own[key] = own
        return own

    async def _report_target(
        self,
        key: Key,
        mig: migrations.Migration,
        state: migrations.TargetState | None = None,
        *,
        domain_active: bool | None = None,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        own = self._target_state(key, mig)
        previous = own.report
        own.report = migrations.TargetReport(
            node=self.node,
            state=state or (previous.state if previous else migrations.TargetState.PREPARING),
            domain_active=domain_active
            if domain_active is not None
            else (previous.domain_active if previous else None),
            reason=reason,
            message=message,
            time=_now(),
        )
        body = reporting.target_fields(own.report, outcome=own.outcome)
        await self.target_writer.apply(namespace=key[0], name=key[1], own=body)
        logger.info("%s/%s: target %s %s", *key, own.report.state, message or "")

    async def _target_pass(self, key: Key, obj: dict[str, Any]) -> None:
        mig = self._parse(key, obj)
        if mig is None:
            return
        st = mig.status or migrations.MigrationStatus()
        own = self._target_state(key, mig)
        vm_key = (key[0], mig.spec.vm_name)
        vm_obj = self.vm(vm_key)
        labels = ((vm_obj or {}).get("metadata") or {}).get("labels") or {}
        domain = naming.domain_name(*vm_key)
        info = await self.hv.lookup(domain)
        running = info is not None and info.state is DomainState.RUNNING
        plan = targeting.decide(
            targeting.Observed(
                node=self.node,
                phase=st.phase.value if st.phase is not None else None,
                reported=own.report.state.value if own.report is not None else None,
                reported_domain_active=own.report.domain_active if own.report else None,
                prepared=key in self._prepared,
                placed_here=labels.get(groups.LABEL_NODE) == self.node,
                domain_active=running,
            )
        )
        if running and own.outcome is None and self._outcome_tries.get(key, 0) < 30:
            # libvirt records the completed job shortly after the domain resumes here
            try:
                stats = await migrating.job_stats(self.hv, domain, completed=True)
            except HypervisorError as exc:
                stats = {}
                logger.info("%s/%s: no completed job stats: %s", *key, exc)
            figures = migrating.outcome(stats, switched_to_post_copy=False)
            if figures.total_time_ms is not None:
                own.outcome = figures
                self._outcome_tries.pop(key, None)
                if plan.action is None and plan.domain_active is None:
                    plan = targeting.Plan(domain_active=True)
            else:
                self._outcome_tries[key] = self._outcome_tries.get(key, 0) + 1
                self.loop.enqueue_later(key, 1.0)
        if plan.action is targeting.Action.PREPARE:
            failure = await self._prepare(key, vm_obj)
            if failure is None:
                self._prepared.add(key)
                await self._report_target(
                    key, mig, migrations.TargetState.READY, domain_active=plan.domain_active
                )
            else:
                reason, message = failure
                await self._report_target(
                    key, mig, migrations.TargetState.FAILED, reason=reason, message=message
                )
        elif plan.action is targeting.Action.CLEAN_UP:
            await self._clean_up(key, domain)
            await self._report_target(key, mig, migrations.TargetState.CLEANED_UP)
        elif plan.domain_active is not None:
            await self._report_target(key, mig, domain_active=plan.domain_active)

    async def _prepare(self, key: Key, vm_obj: dict[str, Any] | None) -> tuple[str, str] | None:
        """Segments and disks for the incoming domain; (reason, message) when impossible."""
        machine = self._machine(vm_obj)
        if vm_obj is None or machine is None:
            return (
                Reason.TARGET_FAILED.value,
                f"node {self.node} cannot see the VM or its status.machine yet",
            )
        identity = _identity(vm_obj)
        try:
            wanted = placing.nic_segments(machine, self.networks, managed=self.managed)
            for segment in wanted:
                await self.node_segments.ensure(segment)
        except KeyError as exc:
            return (
                Reason.NETWORK_UNAVAILABLE.value,
                f"network {exc.args[0]!r} is not offered by node {self.node}",
            )
        except segments.SegmentError as exc:
            return Reason.NETWORK_UNAVAILABLE.value, str(exc)
        try:
            plans = disks.plan(machine, identity, self.layout)
            created = self._created.setdefault(key, [])
            shared = {d.name for d in machine.disks if d.storage == "shared"}
            for disk in plans:
                exists = await asyncio.to_thread(disk.path.exists)
                if disk.name in shared:
                    if not exists:
                        return Reason.STORAGE_UNREACHABLE.value, (
                            f"shared disk {disk.name} is not at {disk.path} on node {self.node}"
                        )
                    continue  # the same file the source uses
                if exists and disk.path not in created:
                    # block copy fills only what the source allocated: mirroring into an
                    # older file would mix two disks' data, and that file is not ours
                    return Reason.STORAGE_UNREACHABLE.value, (
                        f"node-local disk {disk.name} already has a file at {disk.path} on "
                        f"node {self.node}; block copy will not overwrite it"
                    )
                if not exists:
                    await disks.ensure(disk)  # the file block copy fills
                    created.append(disk.path)
        except disks.DiskError as exc:
            return Reason.STORAGE_UNREACHABLE.value, str(exc)
        await self.sync_segments()
        return None

    async def _clean_up(self, key: Key, domain: str) -> None:
        """No domain, no taps (they go with the domain), no disks created for this
        migration; then the segments nobody needs are pruned."""
        info = await self.hv.lookup(domain)
        if info is not None:
            try:
                await self.hv.destroy(domain)
            except HypervisorError as exc:
                logger.info("%s/%s: destroy leftover %s: %s", *key, domain, exc)
            try:
                await self.hv.undefine(domain)
            except HypervisorError as exc:
                logger.info("%s/%s: undefine leftover %s: %s", *key, domain, exc)
        removed = await asyncio.to_thread(disks.remove, self._created.pop(key, []))
        if removed:
            logger.info("%s/%s: removed copied disks %s", *key, [str(p) for p in removed])
        self._prepared.discard(key)
        await self.sync_segments()
