"""Domains we created whose VirtualMachine no longer exists: destroyed and undefined.

An orphan is a domain carrying our metadata (VM identity) for which no VM object with
that uid exists: the VM was deleted while this agent was down and its finalizer removed
by hand, or the agent died between undefine and finalizer removal. The VM is gone, so
nothing will ever start the domain again, and a running orphan holds memory and a tap.

Its disks are kept on purpose: nobody asked for them to be deleted (the delete that did
happen skipped the agent), and a disk is the one thing that cannot be recreated. They
are logged with the removal so an operator can delete them. Domains without our metadata
are never touched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubevisor.agent import disks, domainxml
from kubevisor.agent.kube import objects
from kubevisor.agent.libvirt import Hypervisor
from kubevisor.agent.runtime.informing import Key

logger = logging.getLogger(__name__)


def is_known(obj: Mapping[str, Any] | None, identity: domainxml.Identity) -> bool:
    """Whether ``obj`` is the VM the domain of ``identity`` was made for (pure)."""
    return obj is not None and (obj.get("metadata") or {}).get("uid") == identity.uid


def own_dirs(layout: disks.Layout, key: Key) -> list[Path]:
    """Where a VM's own disks live on this node (pure), for the log line."""
    roots = [layout.state_dir / "disks"]
    if layout.shared_dir is not None:
        roots.append(layout.shared_dir / "disks")
    return [root / key[0] / key[1] for root in roots]


class OrphanSweeper:
    """Sweeps this node's domains (see module docstring).

    ``known``: the VMs the agent watches, by key (any role); ``busy(key)``: a pass or a
    clone copy is working on the VM now, so it is not judged.
    """

    def __init__(
        self,
        hypervisor: Hypervisor,
        vms: objects.CustomObjects,
        *,
        layout: disks.Layout,
        known: Callable[[Key], Mapping[str, Any] | None],
        busy: Callable[[Key], bool],
        every: float = 300.0,
    ) -> None:
        self.hv = hypervisor
        self.vms = vms
        self.layout = layout
        self.known = known
        self.busy = busy
        self.every = every
        self.removed: list[str] = []

    async def run(self) -> None:
        """Sweep now, then every ``every`` seconds; a failed sweep is tried again."""
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("orphan sweep failed; trying again next time")
            await asyncio.sleep(self.every)

    async def sweep(self) -> list[str]:
        """Destroy and undefine the orphaned domains; the names removed."""
        removed: list[str] = []
        for info in await self.hv.list():
            ident = info.identity
            if ident is None:
                continue
            key = (ident.namespace, ident.name)
            if is_known(self.known(key), ident) or self.busy(key):
                continue
            if is_known(await self.vms.get(*key), ident):
                continue  # the VM exists (placed elsewhere, or migrating here): not ours to judge
            logger.warning(
                "%s/%s: domain %s (VM uid %s) is orphaned: its VirtualMachine is gone;"
                " destroying and undefining it, KEEPING its disks (delete them by hand"
                " if unwanted: %s)",
                *key,
                info.name,
                ident.uid,
                ", ".join(str(d) for d in own_dirs(self.layout, key)),
            )
            await self.hv.destroy(info.name)
            await self.hv.undefine(info.name)
            removed.append(info.name)
        self.removed.extend(removed)
        return removed
