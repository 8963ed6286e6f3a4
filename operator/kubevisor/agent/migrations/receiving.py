"""The target role of a Migration on this node: it prepares to receive a VM, says when
the domain runs here, records the final figures, and cleans up after a migration that
did not happen.

One :meth:`TargetRole.reconcile` per pass reads the Migration, the VM (from the VM side's
caches, through the incoming informer role) and the domain, asks the pure plan
(:mod:`.targeting`) what to do and does it. Preparing means the segments the VM's NICs
need and its disks: shared disks must already be at their path, node-local disks for a
block copy are created empty on the same base (and a file already there is refused: the
copy fills only what the source allocated). Clean-up removes only what this role
created for the Migration. libvirt itself starts the incoming domain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kubevisor.agent import diskfiles, disks, segmenting, segments
from kubevisor.agent.kube import statuses as kubestatuses
from kubevisor.agent.libvirt import Hypervisor, HypervisorError, migrating
from kubevisor.agent.libvirt.hypervisor import DomainState
from kubevisor.agent.migrations import reading, reporting, targeting
from kubevisor.agent.runtime import looping
from kubevisor.agent.storagebackends import diskstore
from kubevisor.agent.vms import placing
from kubevisor.api import groups, migrations, naming

logger = logging.getLogger(__name__)

Key = reading.Key
Reason = migrations.MigrationReason
#: Passes that look for libvirt's completed-job figures after the domain resumed here.
OUTCOME_TRIES = 30


@dataclasses.dataclass
class TargetOwn:
    """The target's fields as last applied."""

    report: migrations.TargetReport | None = None
    outcome: migrating.Outcome | None = None


class TargetRole:
    """This node as the target of its Migrations.

    ``vm``: the VM object by key from the VM side's caches; ``sync_segments``: re-declare
    the VMs' segments (prunes what nobody needs); ``loop``: the Migration work loop, asked
    for a later pass while the completed job's figures are not there yet.
    """

    def __init__(
        self,
        hypervisor: Hypervisor,
        *,
        node: str,
        layout: disks.Layout,
        networks: dict[str, str],
        managed_networks: frozenset[str],
        node_segments: segmenting.NodeSegments,
        vm: Callable[[Key], dict[str, Any] | None],
        sync_segments: Callable[[], Awaitable[None]],
        writer: kubestatuses.StatusWriter,
        loop: looping.WorkLoop,
        store: diskstore.DiskStore | None = None,
    ) -> None:
        self.hv = hypervisor
        self.node = node
        self.layout = layout
        self.store = store or diskstore.DiskStore(layout)
        self.networks = networks
        self.managed = managed_networks
        self.node_segments = node_segments
        self.vm = vm
        self.sync_segments = sync_segments
        self.writer = writer
        self.loop = loop
        self._own: dict[Key, TargetOwn] = {}
        self._prepared: set[Key] = set()
        self._outcome_tries: dict[Key, int] = {}
        self._created: dict[Key, list[Path]] = {}
        """Disk files created for a migration (only these are ever removed)."""

    def forget(self, key: Key) -> None:
        """The Migration left this node's target selection: drop what was kept for it.
        Disk files it created and never cleaned up stay (logged): removing a disk is
        only ever done for a Migration we can still read."""
        self._own.pop(key, None)
        self._prepared.discard(key)
        self._outcome_tries.pop(key, None)
        left = self._created.pop(key, [])
        if left:
            logger.warning(
                "%s/%s: Migration gone before clean-up; leaving %s", *key, [str(p) for p in left]
            )

    def _state(self, key: Key, mig: migrations.Migration) -> TargetOwn:
        own = self._own.get(key)
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
            self._own[key] = own
        return own

    async def _report(
        self,
        key: Key,
        mig: migrations.Migration,
        state: migrations.TargetState | None = None,
        *,
        domain_active: bool | None = None,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        own = self._state(key, mig)
        previous = own.report
        own.report = migrations.TargetReport(
            node=self.node,
            state=state or (previous.state if previous else migrations.TargetState.PREPARING),
            domain_active=domain_active
            if domain_active is not None
            else (previous.domain_active if previous else None),
            reason=reason,
            message=message,
            time=reading.now(),
        )
        body = reporting.target_fields(own.report, outcome=own.outcome)
        await self.writer.apply(namespace=key[0], name=key[1], own=body)
        logger.info("%s/%s: target %s %s", *key, own.report.state, message or "")

    async def reconcile(self, key: Key, obj: dict[str, Any]) -> None:
        """One target pass over the Migration ``obj``."""
        mig = reading.migration(key, obj)
        if mig is None:
            return
        st = mig.status or migrations.MigrationStatus()
        own = self._state(key, mig)
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
        if running and own.outcome is None and self._outcome_tries.get(key, 0) < OUTCOME_TRIES:
            if await self._collect_outcome(key, domain, own):
                if plan.action is None and plan.domain_active is None:
                    plan = targeting.Plan(domain_active=True)
        if plan.action is targeting.Action.PREPARE:
            failure = await self._prepare(key, vm_obj)
            if failure is None:
                self._prepared.add(key)
                await self._report(
                    key, mig, migrations.TargetState.READY, domain_active=plan.domain_active
                )
            else:
                reason, message = failure
                await self._report(
                    key, mig, migrations.TargetState.FAILED, reason=reason, message=message
                )
        elif plan.action is targeting.Action.CLEAN_UP:
            await self._clean_up(key, domain)
            await self._report(key, mig, migrations.TargetState.CLEANED_UP)
        elif plan.domain_active is not None:
            await self._report(key, mig, domain_active=plan.domain_active)

    async def _collect_outcome(self, key: Key, domain: str, own: TargetOwn) -> bool:
        """The completed job's figures, which libvirt records shortly after the domain
        resumes here; until they are there, another pass in a second (bounded)."""
        try:
            stats = await migrating.job_stats(self.hv, domain, completed=True)
        except HypervisorError as exc:
            stats = {}
            logger.info("%s/%s: no completed job stats: %s", *key, exc)
        figures = migrating.outcome(stats, switched_to_post_copy=False)
        if figures.total_time_ms is not None:
            own.outcome = figures
            self._outcome_tries.pop(key, None)
            return True
        self._outcome_tries[key] = self._outcome_tries.get(key, 0) + 1
        self.loop.enqueue_later(key, 1.0)
        return False

    async def _prepare(self, key: Key, vm_obj: dict[str, Any] | None) -> tuple[str, str] | None:
        """Segments and disks for the incoming domain; (reason, message) when impossible."""
        machine = reading.machine(vm_obj)
        if vm_obj is None or machine is None:
            return (
                Reason.TARGET_FAILED.value,
                f"node {self.node} cannot see the VM or its status.machine yet",
            )
        identity = reading.identity(vm_obj)
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
            plans = await self.store.plan(machine, identity)
            created = self._created.setdefault(key, [])
            resolved = await self.store.resolved(machine)
            shared = {d.name for d in resolved.disks if d.storage == "shared"}
            for disk in plans:
                if disk.nfs is not None or disk.iscsi is not None:
                    continue  # the image (or LUN) the source runs from: both nodes reach it
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
                    await diskfiles.ensure(disk)  # the file block copy fills
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
        removed = await asyncio.to_thread(diskfiles.remove, self._created.pop(key, []))
        if removed:
            logger.info("%s/%s: removed copied disks %s", *key, [str(p) for p in removed])
        self._prepared.discard(key)
        await self.sync_segments()
