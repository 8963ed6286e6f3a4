"""The live role of a VMBackup: libvirt's push-mode backup of a running domain.

``backupBegin`` fixes the consistent instant at once (QEMU copy-before-write) and creates
this backup's checkpoint; an Incremental names the previous backup's checkpoint. The role
then samples the job about once a second into ``status.progress`` until it ends, and
rebases an Incremental's files onto the previous copies (header only). An agent restarted
mid-backup adopts the job libvirt kept running (``adopt``) instead of beginning another.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from kubevisor.agent import disks, domainxml
from kubevisor.agent.backups import copying, reporting
from kubevisor.agent.libvirt import Hypervisor, backingup
from kubevisor.agent.runtime import informing
from kubevisor.api import vmbackups

logger = logging.getLogger(__name__)

Key = informing.Key
Reason = vmbackups.BackupReason
#: Applies the agent's fields of one VMBackup (the loop's reporter).
Apply = Callable[[Key, reporting.Own], Awaitable[None]]
#: The VMBackup an Incremental chains to (``status.chain.previous``), None when gone.
Previous = Callable[[Key, vmbackups.VMBackup], Awaitable[vmbackups.VMBackup | None]]
PROGRESS_SECONDS = 1.0
#: How often a running backup job is looked at (its end is seen at most this late).
JOB_POLL_SECONDS = 0.05


class LiveRole:
    """Runs one live backup to completion; raises ``copying.CopyError`` or
    ``HypervisorError`` on failure (the loop cleans up and reports)."""

    def __init__(
        self, hv: Hypervisor, layout: disks.Layout, *, apply: Apply, previous: Previous
    ) -> None:
        self.hv = hv
        self.layout = layout
        self.apply = apply
        self.previous = previous

    async def run(
        self,
        key: Key,
        backup: vmbackups.VMBackup,
        own: reporting.Own,
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
                previous = await self.previous(key, backup)
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
        job_began = time.monotonic()
        last = 0.0
        while True:
            sample = await backingup.active(self.hv, domain)
            if sample is None:
                break
            if time.monotonic() - last >= PROGRESS_SECONDS:
                last = time.monotonic()
                own.progress = reporting.progress(sample.done_bytes, sample.total_bytes)
                await self.apply(key, own)
            await asyncio.sleep(JOB_POLL_SECONDS)
        logger.info("%s/%s: backup job ended; timings job=%.0fms", *key,
                    (time.monotonic() - job_began) * 1000)  # fmt: skip
        result = await backingup.finished(self.hv, domain)
        if result is None or not result.succeeded:
            await backingup.delete_checkpoint(self.hv, domain, checkpoint)
            raise copying.CopyError(
                Reason.BACKUP_FAILED,
                f"the backup job failed: {result.message if result else 'libvirt kept no result'}",
            )
        if result.total_bytes is not None:
            own.progress = reporting.progress(result.total_bytes, result.total_bytes)
        if backup.spec.mode is vmbackups.BackupMode.INCREMENTAL:
            previous = await self.previous(key, backup)
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
