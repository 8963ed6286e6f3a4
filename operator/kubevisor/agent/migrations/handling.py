"""The agent's Migration loop: both roles of this node over one work loop.

Keys are Migrations, from two informers narrowed by the controller's labels (this node as
source, this node as target); a runtime :class:`WorkLoop` runs one pass per key, which
hands the Migration to each role that sees it: :class:`.driving.SourceRole` (drives the
libvirt migration) and :class:`.receiving.TargetRole` (prepares, receives, cleans up).
Each role asks its pure plan (:mod:`.sourcing`, :mod:`.targeting`) what to do and applies
its own status fields (:mod:`.reporting`, one field manager per role).

Why the roles split the final figures: with ``UNDEFINE_SOURCE`` the source's domain is
gone when the job ends, and libvirt keeps the completed job's statistics on the
destination only, so the target reports ``totalTimeMs``/``downtimeMs``/``bytesTransferred``
when it sees the domain run there; the source reports the mode (it knows whether it
switched to post-copy), the start and the progress — and, after post-copy, the figures
too, since then the destination keeps none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from kubevisor.agent import disks, segmenting
from kubevisor.agent.kube import ApiClient
from kubevisor.agent.libvirt import Hypervisor
from kubevisor.agent.migrations import driving, receiving, sourcing, targeting, watching
from kubevisor.agent.runtime import informing, looping
from kubevisor.agent.storagebackends import diskstore
from kubevisor.api import nodes

Key = informing.Key
#: Every unsettled Migration of this node is looked at this often even without events.
TICK_SECONDS = 5.0


def reported_state(obj: dict[str, Any], role: watching.Role, node: str) -> str | None:
    """The state ``node`` last reported for ``role`` in the Migration ``obj``, if it was
    this node that reported (pure; raw object, as the informer caches it)."""
    status = obj.get("status") or {}
    report = status.get(role.value) or {}
    return report.get("state") if report.get("node") == node else None


def unsettled(obj: dict[str, Any], role: watching.Role, node: str) -> bool:
    """Whether ``role`` on ``node`` may still have something to do for ``obj`` without a
    change to it (pure): what the tick looks at. Finished Migrations stay in the
    informers' caches for as long as users keep them; ticking them forever would cost a
    libvirt lookup each, every tick."""
    phase = (obj.get("status") or {}).get("phase")
    reported = reported_state(obj, role, node)
    if role is watching.Role.SOURCE:
        return not sourcing.settled(phase, reported)
    return not targeting.settled(phase, reported)


class MigrationHandler:
    """Runs the Migration passes of one node (see module docstring).

    ``vm``: the VM object by key from the VM side's caches (placed or incoming);
    ``peers``: the other nodes' Leases (for the target's migration URI);
    ``sync_segments``: re-declare the VMs' segments (prunes what nobody needs).
    """

    def __init__(
        self,
        api: ApiClient,
        hypervisor: Hypervisor,
        *,
        node: str,
        layout: disks.Layout,
        networks: dict[str, str],
        managed_networks: frozenset[str],
        node_segments: segmenting.NodeSegments,
        vm: Callable[[Key], dict[str, Any] | None],
        peers: Callable[[], Awaitable[list[nodes.NodeLease]]],
        sync_segments: Callable[[], Awaitable[None]],
        workers: int = 2,
        store: diskstore.DiskStore | None = None,
    ) -> None:
        self.node = node
        self.loop = looping.WorkLoop(self._pass, workers=workers)
        self.sources = watching.informer(
            api, watching.Role.SOURCE, node=node, on_change=self.loop.enqueue
        )
        self.targets = watching.informer(
            api, watching.Role.TARGET, node=node, on_change=self.loop.enqueue
        )
        self.source = driving.SourceRole(
            hypervisor,
            node=node,
            layout=layout,
            vm=vm,
            peers=peers,
            writer=watching.writer(api, watching.Role.SOURCE),
            loop=self.loop,
            store=store,
        )
        self.target = receiving.TargetRole(
            hypervisor,
            node=node,
            layout=layout,
            networks=networks,
            managed_networks=managed_networks,
            node_segments=node_segments,
            vm=vm,
            sync_segments=sync_segments,
            writer=watching.writer(api, watching.Role.TARGET),
            loop=self.loop,
            store=store,
        )

    def _ticked(self) -> Iterable[Key]:
        for role, cache in (
            (watching.Role.SOURCE, self.sources.cache),
            (watching.Role.TARGET, self.targets.cache),
        ):
            for key, obj in list(cache.items()):
                if unsettled(obj, role, self.node):
                    yield key

    def vm_changed(self, vm_key: Key) -> None:
        """A domain event or VM change: look at the Migrations of that VM now."""
        for cache in (self.sources.cache, self.targets.cache):
            for key, obj in list(cache.items()):
                spec = obj.get("spec") or {}
                if key[0] == vm_key[0] and spec.get("vmName") == vm_key[1]:
                    self.loop.enqueue(key)

    async def run(self) -> None:
        """Informers, workers and the tick, until cancelled (running drives are aborted
        by their cancellation: the guest stays on the source)."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.sources.run())
                group.create_task(self.targets.run())
                group.create_task(self.loop.run())
                group.create_task(self.loop.tick(TICK_SECONDS, self._ticked))
        finally:
            self.source.stop()

    async def _pass(self, key: Key) -> None:
        source = self.sources.cache.get(key)
        if source is not None:
            await self.source.reconcile(key, source)
        else:
            self.source.forget(key)
        target = self.targets.cache.get(key)
        if target is not None:
            await self.target.reconcile(key, target)
        else:
            self.target.forget(key)
