"""Domains this node must not run: orphans and stale copies, destroyed and undefined.

An orphan is a domain carrying our metadata (VM identity) for which no VM object with
that uid exists: the VM was deleted while this agent was down and its finalizer removed
by hand, or the agent died between undefine and finalizer removal. The VM is gone, so
nothing will ever start the domain again, and a running orphan holds memory and a tap.

Its disks are kept on purpose: nobody asked for them to be deleted (the delete that did
happen skipped the agent), and a disk is the one thing that cannot be recreated. They
are logged with the removal so an operator can delete them. Domains without our metadata
are never touched.

A stale copy is a domain of a VM that exists but is placed on another node
(``nodeloss.stale_here``): the VM was restarted elsewhere while this node was lost and
fenced (docs/node-loss.md). The node that comes back destroys and undefines it, keeping
its disks (they are the ones the VM now runs from), before its work loop may start
anything (:meth:`OrphanSweeper.first_sweep`), and again whenever a VM leaves this node's
label selector (:meth:`OrphanSweeper.sweep_one`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubevisor.agent import disks, domainxml
from kubevisor.agent.kube import objects
from kubevisor.agent.libvirt import DomainInfo, Hypervisor
from kubevisor.agent.runtime.informing import Key
from kubevisor.api import naming, nodeloss

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


def judge(obj: Mapping[str, Any] | None, identity: domainxml.Identity, node: str) -> str | None:
    """What a domain of ``identity`` found on ``node`` is, given its VM as just read
    (``obj``, None when there is none): "orphaned", "stale" or None (keep it). Pure."""
    if not is_known(obj, identity):
        return "orphaned"
    if nodeloss.stale_here(obj, node):
        return "stale"
    return None


class OrphanSweeper:
    """Sweeps this node's domains (see module docstring).

    ``known``: the VMs the agent watches, by key (any role); ``busy(key)``: a pass or a
    clone copy is working on the VM now, so it is not judged. ``node``: this node's name
    (stale copies are domains of VMs placed on another node).
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
        node: str = "",
    ) -> None:
        self.hv = hypervisor
        self.vms = vms
        self.layout = layout
        self.known = known
        self.busy = busy
        self.every = every
        self.node = node
        self.removed: list[str] = []

    async def run(self) -> None:
        """Sweep every ``every`` seconds (after :meth:`first_sweep`); a failed sweep is
        tried again next time."""
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("orphan sweep failed; trying again next time")

    async def first_sweep(self, *, retry: float = 2.0) -> list[str]:
        """The sweep a (re)started agent runs before its work loop starts anything:
        tried until it succeeds (an unreachable API server starts nothing either)."""
        while True:
            try:
                return await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("first sweep for stale copies failed; trying again")
            await asyncio.sleep(retry)

    async def sweep(self) -> list[str]:
        """Destroy and undefine the orphaned domains and stale copies; the names removed."""
        removed: list[str] = []
        for info in await self.hv.list():
            if await self._judge(info):
                removed.append(info.name)
        self.removed.extend(removed)
        return removed

    async def sweep_one(self, key: Key) -> bool:
        """Judge the domain of one VM (it just left this node's label selector)."""
        info = await self.hv.lookup(naming.domain_name(*key))
        if info is None or not await self._judge(info):
            return False
        self.removed.append(info.name)
        return True

    async def _judge(self, info: DomainInfo) -> bool:
        """Remove ``info``'s domain when it is orphaned or stale; whether it was."""
        ident = info.identity
        if ident is None:
            return False
        key = (ident.namespace, ident.name)
        if is_known(self.known(key), ident) or self.busy(key):
            return False
        verdict = judge(await self.vms.get(*key), ident, self.node)
        if verdict is None:
            return False  # placed nowhere yet, or migrating here: not ours to judge
        why = (
            "its VirtualMachine is gone"
            if verdict == "orphaned"
            else "its VirtualMachine is placed on another node now (restarted there"
            " after this node was lost)"
        )
        logger.warning(
            "%s/%s: domain %s (VM uid %s) is %s: %s; destroying and undefining it,"
            " KEEPING its disks (%s)",
            *key,
            info.name,
            ident.uid,
            verdict,
            why,
            ", ".join(str(d) for d in own_dirs(self.layout, key)),
        )
        await self.hv.destroy(info.name)
        await self.hv.undefine(info.name)
        return True
