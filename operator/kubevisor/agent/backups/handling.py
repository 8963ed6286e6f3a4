"""The agent's VMBackup loop, shared by both roles: informer (VMBackups labelled for this
node), a WorkLoop running one pass per key, and one task per backup that copies and
reports.

A pass reads the VMBackup from the cache and the facts from libvirt and the target
directory, asks :func:`planning.decide` and acts: start a drive (live or offline),
adopt a complete directory, fail with a reason, or clean up after deletion. A drive:

- the role copies the disks into the staging directory: live (:mod:`.pushing`, libvirt's
  push-mode backup, adopted when a job already runs) or offline (:mod:`.converting`);
- then the loop checksums, writes the manifest and renames the staging directory to the
  final one, and reports Succeeded (:mod:`.reporting`).

A failure removes the staging directory (and the checkpoint this backup created) and
reports Failed with a reason; nothing an earlier backup wrote is touched. The drive is
cancelled when the agent stops, but not the libvirt job: the next agent adopts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from pathlib import Path
from typing import Any

import pydantic

from kubevisor.agent import disks
from kubevisor.agent.backups import converting, copying, planning, pushing, reporting, watching
from kubevisor.agent.kube import ApiClient, events, objects
from kubevisor.agent.libvirt import Hypervisor, HypervisorError, backingup
from kubevisor.agent.runtime import informing, looping
from kubevisor.api import groups, kinds, naming, vmbackups

logger = logging.getLogger(__name__)

Key = informing.Key
Reason = vmbackups.BackupReason
TICK_SECONDS = 5.0


class BackupHandler:
    """Runs the VMBackup passes of one node (see module docstring)."""

    def __init__(
        self, api: ApiClient, hypervisor: Hypervisor, *, node: str, layout: disks.Layout
    ) -> None:
        self.hv = hypervisor
        self.node = node
        self.layout = layout
        self.loop = looping.WorkLoop(self._pass, workers=2)
        self.informer = watching.informer(api, node=node, on_change=self.loop.enqueue)
        self.writer = watching.writer(api)
        self.objects = objects.CustomObjects(api, watching.PLURAL)
        self.record = events.Recorder(api, kind=kinds.VMBACKUP.kind, node=node).warning
        self._drives: dict[Key, asyncio.Task[None]] = {}
        self._own: dict[Key, reporting.Own] = {}
        self.live = pushing.LiveRole(hypervisor, layout, apply=self._apply, previous=self._previous)
        self.offline = converting.OfflineRole(hypervisor, layout, apply=self._apply)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.informer.run())
                group.create_task(self.loop.run())
                group.create_task(self.loop.tick(TICK_SECONDS, lambda: self.informer.cache))
        finally:
            for task in self._drives.values():
                task.cancel()

    # -- facts ----------------------------------------------------------------------------

    def _roots(self) -> dict[str, str | None]:
        shared = str(self.layout.shared_dir) if self.layout.shared_dir else None
        return {"local": str(self.layout.state_dir), "shared": shared}

    def _dirs(self, key: Key, backup: vmbackups.VMBackup) -> tuple[Path, Path, Path] | None:
        """(target, staging, final) on this node, None when the storage is missing."""
        target = vmbackups.target_dir(backup.spec.target, roots=self._roots())
        if target is None:
            return None
        return (
            Path(target),
            Path(vmbackups.staging_dir(target, key[0], key[1])),
            Path(vmbackups.backup_dir(target, key[0], key[1])),
        )

    async def _domain_state(self, domain: str) -> str | None:
        info = await self.hv.lookup(domain)
        return None if info is None else str(info.state)

    # -- the pass -------------------------------------------------------------------------

    async def _pass(self, key: Key) -> None:
        obj = self.informer.cache.get(key)
        if obj is None:
            self._own.pop(key, None)
            return
        try:
            backup = vmbackups.VMBackup.model_validate(obj)
        except pydantic.ValidationError as exc:
            logger.warning("%s/%s: VMBackup unreadable: %s", *key, exc)
            return
        meta = obj.get("metadata") or {}
        st = backup.status or vmbackups.VMBackupStatus()
        own = self._own.setdefault(key, reporting.Own.of(st))
        domain = naming.domain_name(key[0], backup.spec.vm_name)
        dirs = self._dirs(key, backup)
        finalizers = list(meta.get("finalizers") or [])
        driving = key in self._drives and not self._drives[key].done()
        state = await self._domain_state(domain)
        job = False
        if state in planning.LIVE_STATES and not driving:
            with contextlib.suppress(HypervisorError):
                job = await backingup.active(self.hv, domain) is not None
        plan = planning.decide(
            planning.Observed(
                phase=st.phase or vmbackups.VMBackupPhase.PENDING,
                reported=own.report.state if own.report else None,
                mode=backup.spec.mode,
                deleting=bool(meta.get("deletionTimestamp")),
                controller_finalizer=groups.FINALIZER in finalizers,
                agent_finalizer=groups.AGENT_FINALIZER in finalizers,
                domain=state,
                job_running=job,
                final_complete=dirs is not None and copying.read_manifest(dirs[2]) is not None,
                driving=driving,
            )
        )
        if plan.action is planning.Action.NOTHING:
            return
        if plan.action is planning.Action.CLEAN_UP:
            await self._clean_up(key, obj, backup, domain, dirs)
            return
        if plan.action is planning.Action.FAIL:
            await self._fail(key, obj, own, plan.reason or Reason.BACKUP_FAILED, plan.message)
            return
        if dirs is None:
            await self._fail(
                key, obj, own, Reason.TARGET_UNAVAILABLE,
                f"this node has no {backup.spec.target.storage} storage for the backup target.",
            )  # fmt: skip
            return
        if groups.AGENT_FINALIZER not in finalizers:
            await self.objects.add_finalizer(obj, groups.AGENT_FINALIZER)
        if plan.action is planning.Action.ADOPT_DONE:
            manifest = copying.read_manifest(dirs[2]) or {}
            await self._succeed_from_manifest(key, own, manifest)
            return
        run = self.live.run if plan.action is planning.Action.LIVE else self.offline.run
        task = asyncio.get_running_loop().create_task(
            self._drive(key, obj, backup, own, domain, dirs, run, adopt=job)
        )
        self._drives[key] = task
        task.add_done_callback(functools.partial(self._drive_done, key))

    def _drive_done(self, key: Key, _task: asyncio.Task[None]) -> None:
        self.loop.enqueue(key)

    # -- reports --------------------------------------------------------------------------

    async def _apply(self, key: Key, own: reporting.Own) -> None:
        await self.writer.apply(namespace=key[0], name=key[1], own=own.wire())

    async def _fail(
        self, key: Key, obj: dict[str, Any], own: reporting.Own, reason: str, message: str
    ) -> None:
        logger.warning("%s/%s: backup failed (%s): %s", *key, reason, message)
        own.report = vmbackups.AgentReport(
            node=self.node, state=vmbackups.AgentState.FAILED, reason=reason, message=message[:4096]
        )
        own.completed_at = reporting.now()
        own.started_at = own.started_at or own.completed_at
        await self._apply(key, own)
        await self.record(obj, reason, message)

    async def _succeed_from_manifest(
        self, key: Key, own: reporting.Own, manifest: dict[str, Any]
    ) -> None:
        try:
            disks_ = [vmbackups.BackupDisk.model_validate(d) for d in manifest.get("disks", [])]
        except pydantic.ValidationError:
            disks_ = []
        own.disks = disks_
        own.size_bytes = sum(d.size_bytes or 0 for d in disks_)
        own.checkpoint = manifest.get("checkpoint")
        own.directory = manifest.get("directory")
        own.completed_at = own.completed_at or reporting.now()
        own.started_at = own.started_at or own.completed_at
        own.report = vmbackups.AgentReport(node=self.node, state=vmbackups.AgentState.SUCCEEDED)
        await self._apply(key, own)

    # -- drives ---------------------------------------------------------------------------

    async def _drive(
        self,
        key: Key,
        obj: dict[str, Any],
        backup: vmbackups.VMBackup,
        own: reporting.Own,
        domain: str,
        dirs: tuple[Path, Path, Path],
        run: Any,
        *,
        adopt: bool,
    ) -> None:
        target, staging, final = dirs
        began = time.monotonic()
        own.started_at = own.started_at if adopt and own.started_at else reporting.now()
        own.report = vmbackups.AgentReport(node=self.node, state=vmbackups.AgentState.RUNNING)
        own.directory = str(final)
        await self._apply(key, own)
        names: list[str] = []
        try:
            if not adopt:
                path = backup.spec.target.path
                copying.prepare_staging(
                    target, staging, create_target=not (path or "").startswith("/")
                )
            names, checkpoint = await run(key, backup, own, domain, staging, adopt=adopt)
            await self._finish(key, backup, own, staging, final, names, checkpoint, began=began)
        except copying.CopyError as exc:
            if exc.reason != Reason.TARGET_UNAVAILABLE:
                copying.remove_staging(staging)
            await self._fail(key, obj, own, exc.reason, str(exc))
        except backingup.QuiesceError as exc:
            copying.remove_staging(staging)
            await self._fail(
                key, obj, own, Reason.QUIESCE_FAILED,
                f"could not freeze the guest's file systems (spec.quiesce): {exc}",
            )  # fmt: skip
        except HypervisorError as exc:
            copying.remove_staging(staging)
            with contextlib.suppress(HypervisorError):
                await backingup.delete_checkpoint(
                    self.hv, domain, vmbackups.checkpoint_name(key[1])
                )
            await self._fail(key, obj, own, Reason.BACKUP_FAILED, f"libvirt: {exc}")

    async def _previous(self, key: Key, backup: vmbackups.VMBackup) -> vmbackups.VMBackup | None:
        chain = backup.status.chain if backup.status else None
        if chain is None or chain.previous is None:
            return None
        raw = await self.objects.get(key[0], chain.previous)
        if raw is None:
            return None
        try:
            return vmbackups.VMBackup.model_validate(raw)
        except pydantic.ValidationError:
            return None

    async def _finish(
        self,
        key: Key,
        backup: vmbackups.VMBackup,
        own: reporting.Own,
        staging: Path,
        final: Path,
        names: list[str],
        checkpoint: str,
        *,
        began: float,
    ) -> None:
        copied = time.monotonic()
        described = await copying.describe(staging, final, names)
        summed = time.monotonic()
        manifest = {
            "namespace": key[0],
            "name": key[1],
            "vmName": backup.spec.vm_name,
            "mode": backup.spec.mode.value,
            "checkpoint": checkpoint or None,
            "directory": str(final),
            "chain": backup.status.chain.model_dump(mode="json")
            if backup.status and backup.status.chain
            else None,
            "disks": [d.model_dump(mode="json", by_alias=True) for d in described],
        }
        await asyncio.to_thread(copying.commit, staging, final, manifest)
        own.completed_at = reporting.now()
        committed = time.monotonic()
        # where the time went (bench/backup.py reads this line)
        logger.info(
            "%s/%s: backup complete in %s; timings copy=%.0fms checksum=%.0fms commit=%.0fms",
            *key, final, (copied - began) * 1000, (summed - copied) * 1000,
            (committed - summed) * 1000,
        )  # fmt: skip
        await self._succeed_from_manifest(key, own, manifest)

    # -- deletion -------------------------------------------------------------------------

    async def _clean_up(
        self,
        key: Key,
        obj: dict[str, Any],
        backup: vmbackups.VMBackup,
        domain: str,
        dirs: tuple[Path, Path, Path] | None,
    ) -> None:
        task = self._drives.pop(key, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        state = await self._domain_state(domain)
        if state in planning.LIVE_STATES:
            with contextlib.suppress(HypervisorError):
                if await backingup.active(self.hv, domain) is not None:
                    await backingup.abort(self.hv, domain)
        if dirs is not None:
            _, staging, final = dirs
            copying.remove_staging(staging)
            if not backup.spec.retain:
                names = [d.name for d in (backup.status.disks if backup.status else [])]
                removed = copying.remove_backup(final, names)
                logger.info("%s/%s: removed %s", *key, [str(p) for p in removed])
        if state is not None:
            with contextlib.suppress(HypervisorError):
                await backingup.delete_checkpoint(
                    self.hv, domain, vmbackups.checkpoint_name(key[1])
                )
        await self.objects.remove_finalizer(obj, groups.AGENT_FINALIZER)
        self._own.pop(key, None)
