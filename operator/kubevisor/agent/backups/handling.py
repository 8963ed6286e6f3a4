"""The agent's VMBackup loop: informer (VMBackups labelled for this node), a WorkLoop
running one pass per key, and one task per backup that copies and reports.

A pass reads the VMBackup from the cache and the facts from libvirt and the target
directory, asks :func:`planning.decide` and acts: start a drive (live or offline),
adopt a complete directory, fail with a reason, or clean up after deletion. A drive:

- live: ``backingup.begin`` (unless a backup job already runs on the domain: an agent
  restarted mid-backup follows the job it finds), then samples the job about once a
  second into ``status.progress``; on completion it rebases an Incremental's files onto
  the previous copies, checksums, writes the manifest and renames the staging directory
  to the final one, then reports Succeeded;
- offline: ``qemu-img convert`` of each disk into the staging directory, then the same.

A failure removes the staging directory (and the checkpoint this backup created) and
reports Failed with a reason; nothing an earlier backup wrote is touched. The drive is
cancelled when the agent stops, but not the libvirt job: the next agent adopts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic

from kubevisor.agent import disks, domainxml
from kubevisor.agent.backups import copying, planning, watching
from kubevisor.agent.kube import ApiClient, events, objects
from kubevisor.agent.libvirt import Hypervisor, HypervisorError, backingup
from kubevisor.agent.runtime import informing, looping
from kubevisor.api import groups, kinds, naming, vmbackups

logger = logging.getLogger(__name__)

Key = informing.Key
Reason = vmbackups.BackupReason
TICK_SECONDS = 5.0
PROGRESS_SECONDS = 1.0
#: How often a running backup job is looked at (its end is seen at most this late).
JOB_POLL_SECONDS = 0.05


def _now() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass
class Own:
    """The agent's fields as last applied (SSA: each apply sends all of them)."""

    report: vmbackups.AgentReport | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    progress: vmbackups.BackupProgress | None = None
    disks: list[vmbackups.BackupDisk] = dataclasses.field(default_factory=list)
    size_bytes: int | None = None
    checkpoint: str | None = None
    directory: str | None = None

    @classmethod
    def of(cls, st: vmbackups.VMBackupStatus | None) -> Own:
        if st is None:
            return cls()
        return cls(
            report=st.agent,
            started_at=st.started_at,
            completed_at=st.completed_at,
            progress=st.progress,
            disks=list(st.disks),
            size_bytes=st.size_bytes,
            checkpoint=st.checkpoint,
            directory=st.directory,
        )

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.report is not None:
            out["agent"] = self.report.model_dump(mode="json", by_alias=True, exclude_none=True)
        if self.started_at is not None:
            out["startedAt"] = self.started_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.completed_at is not None:
            out["completedAt"] = self.completed_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            if self.started_at is not None:
                ms = int((self.completed_at - self.started_at).total_seconds() * 1000)
                out["durationMs"] = max(ms, 0)
        if self.progress is not None:
            out["progress"] = self.progress.model_dump(
                mode="json", by_alias=True, exclude_none=True
            )
        if self.disks:
            out["disks"] = [
                d.model_dump(mode="json", by_alias=True, exclude_none=True) for d in self.disks
            ]
        if self.size_bytes is not None:
            out["sizeBytes"] = self.size_bytes
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint
        if self.directory is not None:
            out["directory"] = self.directory
        return out


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
        self._own: dict[Key, Own] = {}

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
        own = self._own.setdefault(key, Own.of(st))
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
        run = self._live if plan.action is planning.Action.LIVE else self._offline
        task = asyncio.get_running_loop().create_task(
            self._drive(key, obj, backup, own, domain, dirs, run, adopt=job)
        )
        self._drives[key] = task
        task.add_done_callback(functools.partial(self._drive_done, key))

    def _drive_done(self, key: Key, _task: asyncio.Task[None]) -> None:
        self.loop.enqueue(key)

    # -- reports --------------------------------------------------------------------------

    async def _apply(self, key: Key, own: Own) -> None:
        await self.writer.apply(namespace=key[0], name=key[1], own=own.wire())

    async def _fail(
        self, key: Key, obj: dict[str, Any], own: Own, reason: str, message: str
    ) -> None:
        logger.warning("%s/%s: backup failed (%s): %s", *key, reason, message)
        own.report = vmbackups.AgentReport(
            node=self.node, state=vmbackups.AgentState.FAILED, reason=reason, message=message[:4096]
        )
        own.completed_at = _now()
        own.started_at = own.started_at or own.completed_at
        await self._apply(key, own)
        await self.record(obj, reason, message)

    async def _succeed_from_manifest(self, key: Key, own: Own, manifest: dict[str, Any]) -> None:
        try:
            disks_ = [vmbackups.BackupDisk.model_validate(d) for d in manifest.get("disks", [])]
        except pydantic.ValidationError:
            disks_ = []
        own.disks = disks_
        own.size_bytes = sum(d.size_bytes or 0 for d in disks_)
        own.checkpoint = manifest.get("checkpoint")
        own.directory = manifest.get("directory")
        own.completed_at = own.completed_at or _now()
        own.started_at = own.started_at or own.completed_at
        own.report = vmbackups.AgentReport(node=self.node, state=vmbackups.AgentState.SUCCEEDED)
        await self._apply(key, own)

    # -- drives ---------------------------------------------------------------------------

    async def _drive(
        self,
        key: Key,
        obj: dict[str, Any],
        backup: vmbackups.VMBackup,
        own: Own,
        domain: str,
        dirs: tuple[Path, Path, Path],
        run: Any,
        *,
        adopt: bool,
    ) -> None:
        target, staging, final = dirs
        own.started_at = own.started_at if adopt and own.started_at else _now()
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
            await self._finish(key, backup, own, staging, final, names, checkpoint)
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

    async def _live(
        self,
        key: Key,
        backup: vmbackups.VMBackup,
        own: Own,
        domain: str,
        staging: Path,
        *,
        adopt: bool,
    ) -> tuple[list[str], str]:
        machine = backup.status.machine if backup.status else None
        if machine is None:
            raise copying.CopyError(Reason.BACKUP_FAILED, "the controller recorded no machine")
        checkpoint = vmbackups.checkpoint_name(key[1])
        identity = domainxml.Identity(namespace=key[0], name=backup.spec.vm_name, uid="")
        wanted = {str(disks.disk_path(self.layout, identity, d)): d.name for d in machine.disks}
        domain_disks = await backingup.disks_of(self.hv, domain)
        targets = [
            backingup.DiskTarget(
                dev=d.dev,
                file=vmbackups.disk_file(str(staging), wanted[d.source])
                if d.source in wanted and d.device == "disk" and not d.readonly
                else None,
            )
            for d in domain_disks
        ]
        names = [wanted[d.source] for d in domain_disks if d.source in wanted]
        if not adopt:
            incremental = None
            if backup.spec.mode is vmbackups.BackupMode.INCREMENTAL:
                previous = await self._previous(key, backup)
                prev_cp = previous.status.checkpoint if previous and previous.status else None
                existing = await backingup.checkpoints(self.hv, domain)
                if prev_cp is None or prev_cp not in existing:
                    raise copying.CopyError(
                        Reason.CHECKPOINT_MISSING,
                        f"the previous backup's checkpoint {prev_cp} is not on domain"
                        f" {domain} (the VM moved or was redefined); take a Full backup.",
                    )
                incremental = prev_cp
            # a checkpoint of an earlier, abandoned attempt of this backup goes first
            await backingup.delete_checkpoint(self.hv, domain, checkpoint)
            await backingup.begin(
                self.hv,
                domain,
                backingup.backup_xml(targets, incremental=incremental),
                backingup.checkpoint_xml(checkpoint, targets),
                quiesce=backup.spec.quiesce,
            )
            logger.info(
                "%s/%s: live backup of %s started (%s)", *key, domain, incremental or "full"
            )
        last = 0.0
        while True:
            sample = await backingup.active(self.hv, domain)
            if sample is None:
                break
            if time.monotonic() - last >= PROGRESS_SECONDS:
                last = time.monotonic()
                own.progress = _progress(sample.done_bytes, sample.total_bytes)
                await self._apply(key, own)
            await asyncio.sleep(JOB_POLL_SECONDS)
        result = await backingup.finished(self.hv, domain)
        if result is None or not result.succeeded:
            await backingup.delete_checkpoint(self.hv, domain, checkpoint)
            raise copying.CopyError(
                Reason.BACKUP_FAILED,
                f"the backup job failed: {result.message if result else 'libvirt kept no result'}",
            )
        if result.total_bytes is not None:
            own.progress = _progress(result.total_bytes, result.total_bytes)
        if backup.spec.mode is vmbackups.BackupMode.INCREMENTAL:
            previous = await self._previous(key, backup)
            paths = {
                d.name: d.path
                for d in (previous.status.disks if previous and previous.status else [])
            }
            for name in names:
                if name not in paths:
                    raise copying.CopyError(
                        Reason.BACKUP_FAILED, f"the previous backup has no copy of disk {name}"
                    )
                await copying.rebase_onto(
                    Path(vmbackups.disk_file(str(staging), name)), paths[name]
                )
        return names, checkpoint

    async def _offline(
        self,
        key: Key,
        backup: vmbackups.VMBackup,
        own: Own,
        domain: str,
        staging: Path,
        *,
        adopt: bool,
    ) -> tuple[list[str], str]:
        machine = backup.status.machine if backup.status else None
        if machine is None:
            raise copying.CopyError(Reason.BACKUP_FAILED, "the controller recorded no machine")
        identity = domainxml.Identity(namespace=key[0], name=backup.spec.vm_name, uid="")
        sources = [(d.name, disks.disk_path(self.layout, identity, d)) for d in machine.disks]
        total = 0
        for name, path in sources:
            if not path.is_file():
                raise copying.CopyError(
                    Reason.BACKUP_FAILED, f"disk {name}'s file {path} is not on this node"
                )
            total += (await disks.image_info(path))[1]
        done = 0
        own.progress = _progress(0, total)
        await self._apply(key, own)
        for name, path in sources:
            await copying.convert(path, Path(vmbackups.disk_file(str(staging), name)))
            done += (await disks.image_info(path))[1]
            own.progress = _progress(done, total)
            await self._apply(key, own)
        return [n for n, _ in sources], ""

    async def _finish(
        self,
        key: Key,
        backup: vmbackups.VMBackup,
        own: Own,
        staging: Path,
        final: Path,
        names: list[str],
        checkpoint: str,
    ) -> None:
        described = await copying.describe(staging, final, names)
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
        own.completed_at = _now()
        logger.info("%s/%s: backup complete in %s", *key, final)
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


def _progress(done: int, total: int | None) -> vmbackups.BackupProgress:
    percent = min(100, done * 100 // total) if total else None
    return vmbackups.BackupProgress(
        done_bytes=done, total_bytes=total, percent=percent, updated_at=_now()
    )
