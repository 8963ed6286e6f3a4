"""The source role of a Migration on this node: it drives libvirt's peer-to-peer live
migration of a VM that runs here, and reports what the job does.

One :meth:`SourceRole.reconcile` per pass reads the Migration, the domain and libvirt's
job, asks the pure plan (:mod:`.sourcing`) what to do and does it: start a drive (a task
that runs the migration with the policy, samples progress about once a second and
switches to post-copy when pre-copy stopped converging), adopt a job a previous agent
process started, or abort. The source reports the mode, the start and the progress; the
final figures come from the target, except after post-copy (see ``migrations.FIGURE_FIELDS``
and the module docstring of :mod:`.handling`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kubevisor.agent import diskfiles, disks, domainxml, reconciling
from kubevisor.agent.kube import statuses as kubestatuses
from kubevisor.agent.libvirt import Hypervisor, HypervisorError, migrating
from kubevisor.agent.migrations import reading, reporting, sourcing
from kubevisor.agent.runtime import looping
from kubevisor.agent.storagebackends import diskstore
from kubevisor.api import machines, migrations, naming, nodes

logger = logging.getLogger(__name__)

Key = reading.Key
Reason = migrations.MigrationReason


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
class Drive:
    """A migration job this process runs (or adopted); gone from the role when it ends."""

    task: asyncio.Task[None]
    abort_reason: Reason | None = None
    last_progress: float | None = None
    samples: list[migrations.MigrationProgress] = dataclasses.field(default_factory=list)
    switched: bool = False


def _aborted(reason: Reason, node: str) -> sourcing.Report:
    return sourcing.Report(
        sourcing.State.ABORTED, reason, f"aborted ({reason}); the VM keeps running on {node}"
    )


class SourceRole:
    """This node as the source of its Migrations.

    ``vm``: the VM object by key from the VM side's caches; ``peers``: the other nodes'
    Leases (the target's migration URI, address and state directory); ``loop``: the
    Migration work loop, asked for another pass when a drive ends.
    """

    def __init__(
        self,
        hypervisor: Hypervisor,
        *,
        node: str,
        layout: disks.Layout,
        vm: Callable[[Key], dict[str, Any] | None],
        peers: Callable[[], Awaitable[list[nodes.NodeLease]]],
        writer: kubestatuses.StatusWriter,
        loop: looping.WorkLoop,
        store: diskstore.DiskStore | None = None,
    ) -> None:
        self.hv = hypervisor
        self.node = node
        self.layout = layout
        self.store = store or diskstore.DiskStore(layout)
        self.vm = vm
        self.peers = peers
        self.writer = writer
        self.loop = loop
        self._own: dict[Key, SourceOwn] = {}
        self._drives: dict[Key, Drive] = {}
        self._swept: set[Key] = set()
        """Succeeded Migrations whose stale source disks this process has removed."""

    def forget(self, key: Key) -> None:
        """The Migration left this node's source selection: drop what was kept for it
        (a drive still running goes on until libvirt ends it, then removes itself)."""
        self._own.pop(key, None)
        self._swept.discard(key)

    def stop(self) -> None:
        """Cancel every drive (the agent stops): libvirt aborts the jobs and the guests
        stay here."""
        for drive in self._drives.values():
            drive.task.cancel()

    def _state(self, key: Key, mig: migrations.Migration) -> SourceOwn:
        own = self._own.get(key)
        if own is None:
            st = mig.status or migrations.MigrationStatus()
            report = st.source if st.source is not None and st.source.node == self.node else None
            own = SourceOwn(
                report=report, started_at=st.started_at, progress=st.progress, mode=st.mode
            )
            self._own[key] = own
        return own

    async def _apply(self, key: Key, own: SourceOwn) -> None:
        if own.report is None:
            return
        body = reporting.source_fields(
            own.report,
            started_at=own.started_at,
            progress=own.progress,
            mode=own.mode,
            outcome=own.outcome,
        )
        await self.writer.apply(namespace=key[0], name=key[1], own=body)

    async def _report(self, key: Key, mig: migrations.Migration, report: sourcing.Report) -> None:
        own = self._state(key, mig)
        own.report = migrations.SourceReport(
            node=self.node,
            state=report.state,
            reason=report.reason.value if report.reason is not None else None,
            message=report.message,
            time=reading.now(),
        )
        await self._apply(key, own)
        logger.info("%s/%s: source %s %s", *key, report.state, report.message or "")

    async def _job_active(self, domain: str) -> bool:
        try:
            stats = await migrating.job_stats(self.hv, domain)
        except HypervisorError:
            return False
        return stats.get("type") in migrating.ACTIVE_JOB_TYPES

    async def reconcile(self, key: Key, obj: dict[str, Any]) -> None:
        """One source pass over the Migration ``obj``."""
        mig = reading.migration(key, obj)
        if mig is None:
            return
        st = mig.status or migrations.MigrationStatus()
        own = self._state(key, mig)
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
            timed_out=started is not None and reading.now() - started > timeout,
            driving=driving,
            domain_active=active,
            job_active=info is not None and not driving and await self._job_active(domain),
        )
        plan = sourcing.decide(observed)
        if plan.action is sourcing.Action.START:
            target = await self._target(st.target_node)
            if isinstance(target, sourcing.Report):
                await self._report(key, mig, target)
                return
            own.started_at = reading.now()
            await self._report(key, mig, plan.report or sourcing.Report(sourcing.State.MIGRATING))
            await self._start_drive(key, mig, domain, target)
            return
        if plan.report is not None:
            await self._report(key, mig, plan.report)
        if key not in self._swept and sourcing.stale_copies_here(
            phase=observed.phase,
            reported=own.report.state.value if own.report is not None else None,
            domain_here=info is not None,
            vm_labels=self._vm_labels(key, mig),
            node=self.node,
        ):
            self._swept.add(key)
            await self._drop_after_success(key, mig, st.target_node)
        if plan.action is sourcing.Action.ABORT:
            await self._abort(key, mig, domain, plan.abort_reason or Reason.CANCELLED)
        elif plan.action is sourcing.Action.ADOPT and key not in self._drives:
            self._adopt(key, mig, domain)

    async def _target(self, target: str | None) -> nodes.Capacity | sourcing.Report:
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

    def _track(self, key: Key, run: Callable[[Drive], Awaitable[None]]) -> None:
        """Start ``run`` as the drive of ``key``; it leaves the role when it ends, and the
        loop looks at the Migration again."""
        holder: dict[str, Drive] = {}

        async def body() -> None:
            try:
                await run(holder["drive"])
            finally:
                self._drives.pop(key, None)
                self.loop.enqueue(key)

        drive = Drive(task=asyncio.create_task(body()))
        holder["drive"] = drive
        self._drives[key] = drive

    async def _machine(self, vm_obj: dict[str, Any] | None) -> machines.MachineSpec | None:
        """The VM's recorded machine, disks on local/shared backends read as that storage
        (so block copy takes exactly the node-local disks)."""
        machine = reading.machine(vm_obj)
        return await self.store.resolved(machine) if machine is not None else None

    async def _start_drive(
        self, key: Key, mig: migrations.Migration, domain: str, dest: nodes.Capacity
    ) -> None:
        vm_obj = self.vm((key[0], mig.spec.vm_name))
        machine = await self._machine(vm_obj)
        local = disks.local_disk_targets(machine) if machine is not None else []
        paths = self._block_copy_paths(vm_obj, machine, dest) if local else {}

        async def run(drive: Drive) -> None:
            await self._drive(key, mig, domain, dest, local, paths, drive)

        self._track(key, run)

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
            machine, reading.identity(vm_obj), self.layout, Path(dest.local_storage)
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
        own = self._state(key, mig)

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
                await self._apply(key, own)

        outcome: sourcing.Report
        try:
            request = migrating.build(
                policy,
                shared_storage=True,
                local_disks=local,
                management_address=dest.management_address,
            )
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
            outcome = _aborted(drive.abort_reason or Reason.CANCELLED, self.node)
        except (HypervisorError, ValueError) as exc:
            if drive.abort_reason is not None:
                outcome = _aborted(drive.abort_reason, self.node)
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
        await self._report(key, mig, outcome)

    def _vm_labels(self, key: Key, mig: migrations.Migration) -> dict[str, str]:
        vm_obj = self.vm((key[0], mig.spec.vm_name)) or {}
        return dict((vm_obj.get("metadata") or {}).get("labels") or {})

    async def _drop_after_success(
        self, key: Key, mig: migrations.Migration, target: str | None
    ) -> None:
        vm_obj = self.vm((key[0], mig.spec.vm_name))
        machine = await self._machine(vm_obj)
        if machine is None or not disks.local_disk_targets(machine):
            return
        dest = await self._target(target)
        if isinstance(dest, sourcing.Report):
            logger.warning("%s/%s: cannot tell where the block copy went; source disks kept "
                           "(%s)", *key, dest.message)  # fmt: skip
            return
        await self._drop_block_copied(key, self._block_copy_paths(vm_obj, machine, dest))

    async def _drop_block_copied(self, key: Key, disk_paths: dict[str, str]) -> None:
        """After a block copy succeeded the guest runs from the target's copies; this
        node's copies are stale (a later migration back would mirror into them), so they
        go, as a move (``mv``) leaves no source. Only paths that differ from the
        target's: nodes sharing one filesystem at the same path hold one file."""
        stale = [Path(src) for src, dst in disk_paths.items() if src != dst]
        removed = await asyncio.to_thread(diskfiles.remove, stale)
        if removed:
            logger.info("%s/%s: removed the source copies %s", *key, [str(p) for p in removed])

    def _adopt(self, key: Key, mig: migrations.Migration, domain: str) -> None:
        """A job this process did not start (the agent restarted): sample it until it ends,
        then the next pass decides from what libvirt shows."""
        own = self._state(key, mig)

        async def run(drive: Drive) -> None:
            while True:
                try:
                    stats = await migrating.job_stats(self.hv, domain)
                except HypervisorError:
                    return
                if stats.get("type") not in migrating.ACTIVE_JOB_TYPES:
                    return
                now = time.monotonic()
                if sourcing.progress_due(drive.last_progress, now):
                    drive.last_progress = now
                    own.progress = migrating.progress(stats, now=reading.now())
                    await self._apply(key, own)
                await asyncio.sleep(1.0)  # the libvirt job's sampling period

        self._track(key, run)
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
        await self._report(key, mig, _aborted(reason, self.node))
