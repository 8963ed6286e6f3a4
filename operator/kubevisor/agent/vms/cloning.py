"""Point-in-time copies of a source VM's disks for a clone.

A source domain running on this node is suspended, all its disks are copied
(``qemu-img convert -U``, so every disk is from the same instant), and it is resumed —
also when a copy fails. While it is held, the source's own passes are skipped (otherwise
the paused domain would look like something to resume); it is enqueued again afterwards.
A source that is off, or already paused by its user, is copied as it is and left as it
was. One copy at a time per agent, so two clones of one source never interleave their
suspend/resume.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kubevisor.agent import diskfiles, disks, domainxml
from kubevisor.agent.libvirt import Hypervisor, HypervisorError
from kubevisor.agent.runtime.informing import Key

logger = logging.getLogger(__name__)


class Clones:
    """Copies clone disks; ``holding`` names the sources suspended for a copy right now."""

    def __init__(self, hypervisor: Hypervisor, *, enqueue: Callable[[Key], None]) -> None:
        self.hv = hypervisor
        self.enqueue = enqueue
        self._lock = asyncio.Lock()
        self.holding: set[Key] = set()
        """Clone sources suspended for a copy: their own passes wait (see :meth:`copy`)."""

    async def copy(self, key: Key, plans: list[disks.DiskPlan]) -> None:
        """Copy the clone disks among ``plans`` (of the VM ``key``) from their sources."""
        async with self._lock:
            held: list[domainxml.Identity] = []
            try:
                for source in disks.clone_sources(plans):
                    info = await self.hv.lookup(source.domain_name)
                    if info is None or info.state != "running":
                        continue
                    self.holding.add((source.namespace, source.name))
                    held.append(source)
                    logger.info(
                        "%s/%s: suspending clone source %s for a point-in-time copy",
                        *key,
                        source.domain_name,
                    )
                    await self.hv.suspend(source.domain_name)
                for disk in plans:
                    if disk.source_vm is not None and disk.base is not None:
                        await diskfiles.ensure(disk)
            finally:
                for source in held:
                    source_key = (source.namespace, source.name)
                    try:
                        await self.hv.resume(source.domain_name)
                    except HypervisorError as exc:
                        logger.error("could not resume clone source %s: %s", source, exc)
                    finally:
                        self.holding.discard(source_key)
                        self.enqueue(source_key)
            if held:
                logger.info(
                    "%s/%s: copied disks of %s; resumed the source(s)",
                    *key,
                    ", ".join(s.domain_name for s in held),
                )
