"""VM disks on an NFS backend: made, found and deleted from the node's network namespace.

QEMU opens these disks with its own NFS client from the node's network (where the node's
libvirtd runs), so the agent does its work from there too: ``qemu-img`` is started under
``nsenter --net`` into the node's namespace, and the libnfs calls
(:mod:`.nfsfiles`) run on threads that entered it (``kernel.netnsthreads``). Like a node
file, an image appears only complete: written under a temporary name, then renamed on
the server. A failure is a DiskError with reason StorageFailed and the client's sentence
(an unreachable server, a refused mount).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

from kubevisor.agent import diskfiles, disks
from kubevisor.agent.kernel import netnsthreads
from kubevisor.agent.storagebackends import nfsfiles
from kubevisor.api import conditions

logger = logging.getLogger(__name__)

#: qemu-img over nfs:// gives up after this long (an image is made in well under it).
QEMU_IMG_TIMEOUT_S: Final = 300.0
T = TypeVar("T")


class NFSDisks:
    """The node's hand on NFS exports; ``netns`` is the node's network namespace (None:
    the agent's own network, as on a real host)."""

    def __init__(self, netns: str | None) -> None:
        self._netns = netns
        self._executor: ThreadPoolExecutor = netnsthreads.executor(netns, workers=2)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _nfs(self, fn: Callable[..., T], *args: str) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except nfsfiles.NFSError as exc:
            raise disks.DiskError(conditions.Reason.STORAGE_FAILED, str(exc)) from exc

    async def _run(self, *argv: str) -> str:
        prefix = ("nsenter", f"--net=/run/netns/{self._netns}") if self._netns else ()
        try:
            return await diskfiles.run_command(*prefix, *argv, limit_s=QEMU_IMG_TIMEOUT_S)
        except disks.DiskError as exc:
            raise disks.DiskError(conditions.Reason.STORAGE_FAILED, str(exc)) from exc

    async def ensure(self, disk: disks.DiskPlan) -> bool:
        """Create the image unless it is there; True when it was created now."""
        remote = disk.nfs
        assert remote is not None
        if await self._nfs(nfsfiles.exists, remote.server, remote.export, remote.name):
            return False
        tmp = disks.NFSFile(remote.server, remote.export, diskfiles.temporary_name(remote.name))
        try:
            await diskfiles.make_image(disk, tmp.url, self._run)
            await self._nfs(nfsfiles.rename, remote.server, remote.export, tmp.name, remote.name)
        except BaseException:
            # only a failed make leaves the temporary image (a rename moved it otherwise)
            try:
                await self._nfs(nfsfiles.unlink, tmp.server, tmp.export, tmp.name)
            except disks.DiskError as exc:
                logger.warning("leftover %s not removed: %s", tmp.url, exc)
            raise
        logger.info("created disk %s (%s of %s)", remote.url, disk.clone, disk.base)
        return True

    async def remove(self, files: list[disks.NFSFile]) -> list[str]:
        """Delete the images (missing is fine); return the URLs that went."""
        removed = []
        for remote in files:
            if await self._nfs(nfsfiles.unlink, remote.server, remote.export, remote.name):
                removed.append(remote.url)
        return removed
