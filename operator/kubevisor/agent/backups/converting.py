"""The offline role of a VMBackup: ``qemu-img convert`` of a stopped VM's disks.

Each disk is converted into the staging directory (a linked overlay is flattened), without
``-U``: if the VM is started meanwhile, QEMU or the copy fails on the image lock rather
than the copy reading a disk being written. Progress counts whole disks. Full only; an
Incremental of a stopped VM is refused by the plan (``VMNotRunning``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from kubevisor.agent import diskfiles, disks, domainxml
from kubevisor.agent.backups import copying, reporting
from kubevisor.agent.libvirt import Hypervisor
from kubevisor.agent.runtime import informing
from kubevisor.api import vmbackups

logger = logging.getLogger(__name__)

Key = informing.Key
Reason = vmbackups.BackupReason
#: Applies the agent's fields of one VMBackup (the loop's reporter).
Apply = Callable[[Key, reporting.Own], Awaitable[None]]


class OfflineRole:
    """Copies one stopped VM's disks; raises ``copying.CopyError`` on failure."""

    def __init__(self, hv: Hypervisor, layout: disks.Layout, *, apply: Apply) -> None:
        self.hv = hv
        self.layout = layout
        self.apply = apply

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
        identity = domainxml.Identity(namespace=key[0], name=backup.spec.vm_name, uid="")
        sources = [(d.name, disks.disk_path(self.layout, identity, d)) for d in machine.disks]
        total = 0
        for name, path in sources:
            if not path.is_file():
                raise copying.CopyError(
                    Reason.BACKUP_FAILED, f"disk {name}'s file {path} is not on this node"
                )
            total += (await diskfiles.image_info(path))[1]
        done = 0
        own.progress = reporting.progress(0, total)
        await self.apply(key, own)
        for name, path in sources:
            await copying.convert(path, Path(vmbackups.disk_file(str(staging), name)))
            done += (await diskfiles.image_info(path))[1]
            own.progress = reporting.progress(done, total)
            await self.apply(key, own)
        return [n for n, _ in sources], ""
