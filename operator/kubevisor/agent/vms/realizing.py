"""The agent's VM side wired together: informers, the work loop, libvirt events, ticks.

Keys come from the ``placed`` informer (the VMs labelled for this node), libvirt
lifecycle events and a periodic tick, and go through the runtime's :class:`WorkLoop`
(a key is never handled by two workers at once, repeated wake-ups coalesce) to the
:class:`handling.VMHandler`. The ``incoming`` informer (VMs migrating to this node)
keeps its cache, which the orphan sweep and the Migration loop consult; its changes
re-declare the node's segments. With a heartbeat (the peers' Leases name their migration
URIs) the agent also runs the Migration loop (:mod:`kubevisor.agent.migrations.handling`),
which libvirt events of a VM's domain wake too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
from pathlib import Path
from typing import Any

from kubevisor.agent import disks, domainxml, metrics, segmenting
from kubevisor.agent.kernel import bridges
from kubevisor.agent.kube import ApiClient, events, leases, objects
from kubevisor.agent.kube import statuses as kubestatuses
from kubevisor.agent.libvirt import Hypervisor
from kubevisor.agent.migrations import handling as migrationhandling
from kubevisor.agent.runtime import informing, looping
from kubevisor.agent.storagebackends import diskstore
from kubevisor.agent.vms import cloning, handling, orphans, placing, reporting, statuses, watching
from kubevisor.api import naming, virtualmachines

Key = informing.Key
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Everything the agent was told on its command line, as plain data."""

    node: str
    layout: disks.Layout
    networks: dict[str, str]
    """network name -> bridge realising it on this node."""
    facts: domainxml.HostFacts
    managed_networks: frozenset[str] = frozenset()
    """Networks whose bridge the agent creates on demand and deletes when unneeded."""
    stop_timeout: float = 30.0
    """Seconds a guest gets to power off after ACPI shutdown before it is destroyed."""
    tick: float = 15.0
    """Every VM is looked at this often even without events."""
    workers: int = 4
    orphan_sweep: float = 300.0
    """Seconds between looks for orphaned domains (also done once after the first list)."""

    @property
    def console_dir(self) -> Path:
        return self.layout.state_dir / "console"


class Agent:
    """Runs the VM side of one node (see module docstring)."""

    def __init__(
        self,
        api: ApiClient,
        hypervisor: Hypervisor,
        config: AgentConfig,
        *,
        segments: bridges.Segments,
        heartbeat: leases.Heartbeat | None = None,
        node_segments: segmenting.NodeSegments | None = None,
        store: diskstore.DiskStore | None = None,
    ) -> None:
        self.hv = hypervisor
        store = store or diskstore.DiskStore(config.layout)
        self.config = config
        self.heartbeat = heartbeat
        self.status = kubestatuses.StatusWriter(
            api, kind="VirtualMachine", plural=watching.PLURAL, field_manager=statuses.FIELD_MANAGER
        )
        self.loop = looping.WorkLoop(
            self._reconcile, workers=config.workers, fingerprint=self._fingerprint
        )
        self.watcher = watching.informer(
            api, watching.Role.PLACED, node=config.node, on_change=self._placed_changed
        )
        metrics.count_vms(lambda: self.watcher.cache.values())
        self.incoming = watching.informer(
            api, watching.Role.INCOMING, node=config.node, on_change=self._incoming_changed
        )
        self._background: set[asyncio.Task[None]] = set()
        self.node_segments = node_segments or segmenting.NodeSegments(
            segments,
            users=(segmenting.VMS,),
            networks=config.networks,
            managed=config.managed_networks,
            heartbeat=heartbeat,
        )
        """The node's segment set, shared with the VRF loop when the agent runs both."""
        self.migrations: migrationhandling.MigrationHandler | None = None
        if heartbeat is not None:
            self.migrations = migrationhandling.MigrationHandler(
                api,
                hypervisor,
                node=config.node,
                layout=config.layout,
                networks=config.networks,
                managed_networks=config.managed_networks,
                node_segments=self.node_segments,
                vm=self._known,
                peers=heartbeat.peers,
                sync_segments=self._sync_segments,
                store=store,
            )
        vms = objects.CustomObjects(api, watching.PLURAL)
        self.clones = cloning.Clones(hypervisor, enqueue=self.loop.enqueue)
        self.orphans = orphans.OrphanSweeper(
            hypervisor,
            vms,
            layout=config.layout,
            known=self._known,
            busy=lambda key: key in self.loop.busy or key in self.clones.holding,
            every=config.orphan_sweep,
            node=config.node,
        )
        self.handler = handling.VMHandler(
            hypervisor,
            config,
            cache=lambda: self.watcher.cache,
            vms=vms,
            secrets=objects.Secrets(api),
            clones=self.clones,
            reporter=reporting.Reporter(
                hypervisor,
                self.status,
                console_dir=config.console_dir,
                on_written=self._written,
                addresses=self.node_segments.guest_addresses,
                recheck=self.loop.enqueue_later,
            ),
            node_segments=self.node_segments,
            enqueue_later=self.loop.enqueue_later,
            sync_segments=self._sync_segments,
            forget=self._forget,
            failed=self.loop.failed,
            succeeded=self.loop.succeeded,
            record=events.Recorder(api, kind="VirtualMachine", node=config.node).warning,
            store=store,
        )

        hypervisor.on_reconnect(self._hypervisor_back)
        hypervisor.on_lost(self._hypervisor_lost)

    @property
    def passes(self) -> int:
        """Passes run so far (tests and benchmarks read it)."""
        return self.handler.passes

    @property
    def orphans_removed(self) -> list[str]:
        return self.orphans.removed

    async def sweep_orphans(self) -> list[str]:
        """See :mod:`kubevisor.agent.vms.orphans`."""
        return await self.orphans.sweep()

    def _fingerprint(self, key: Key) -> str:
        """What a pass over ``key`` acts on: a change resets its backoff (the spec, the
        recorded machine, the power request, a user's restart request and deletion; the
        controller's automatic restart bumps do not, see
        ``virtualmachines.restart_request``)."""
        obj = self.watcher.cache.get(key) or {}
        st = obj.get("status") or {}
        meta = obj.get("metadata") or {}
        return json.dumps(
            [
                obj.get("spec"),
                st.get("machine"),
                st.get("desiredState"),
                virtualmachines.restart_request(st.get("restartToken")),
                meta.get("deletionTimestamp"),
            ],
            sort_keys=True,
            default=str,
        )

    def enqueue(self, key: Key) -> None:
        """Ask for a pass over ``key`` (coalesced with pending ones)."""
        self.loop.enqueue(key)

    async def _reconcile(self, key: Key) -> None:
        await self.handler.reconcile(key)

    def _known(self, key: Key) -> dict[str, Any] | None:
        return self.watcher.cache.get(key) or self.incoming.cache.get(key)

    def _forget(self, key: Key) -> None:
        self.watcher.cache.pop(key, None)

    def _written(self, key: Key, obj: dict[str, Any]) -> None:
        if key in self.watcher.cache:
            # Keep the cache ahead of the watch so the next pass sees our own write.
            self.watcher.cache[key] = obj

    async def _events(self) -> None:
        while True:
            event = await self.hv.next_event()
            key = naming.vm_of_domain(event.name)
            if key is not None and key in self.watcher.cache:
                self.loop.enqueue(key)
            if key is not None and self.migrations is not None:
                self.migrations.vm_changed(key)

    def _hypervisor_back(self) -> None:
        """libvirtd is reachable again (restarted, woken): look at every VM now, with its
        backoff reset, so each domain the new libvirtd reports is adopted (or started,
        if it is gone) and its status leaves ``Unknown``."""
        keys = list(self.watcher.cache)
        logger.info("libvirt is back: looking at %d VMs again", len(keys))
        for key in keys:
            self.loop.succeeded(key)
            self.loop.enqueue(key)
            if self.migrations is not None:
                self.migrations.vm_changed(key)

    def _hypervisor_lost(self) -> None:
        """libvirtd went away: a pass over every VM now says so in its status (Unknown,
        HypervisorUnavailable) instead of at the next tick."""
        for key in list(self.watcher.cache):
            self.loop.enqueue(key)

    def _placed_changed(self, key: Key) -> None:
        """A VM placed here changed, or left this node's selector: a pass; one that left
        may have left a stale copy behind (restarted elsewhere after a node loss)."""
        self.loop.enqueue(key)
        if key in self.watcher.cache or not self.watcher.synced.is_set():
            return
        task = asyncio.get_running_loop().create_task(self._sweep_one(key))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _sweep_one(self, key: Key) -> None:
        try:
            await self.orphans.sweep_one(key)
        except Exception:
            logger.exception("%s/%s: looking for a stale copy failed", *key)

    def _incoming_changed(self, key: Key) -> None:
        """A VM started or stopped migrating here: its segments count (or not) now."""
        if self.migrations is not None:
            self.migrations.vm_changed(key)
        if not self.watcher.synced.is_set():
            return  # the first declaration runs after the first list
        task = asyncio.get_running_loop().create_task(self._sync_segments())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def run(self) -> None:
        """Run watches, heartbeat, events, tick and workers until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.watcher.run())
            group.create_task(self.incoming.run())
            if self.heartbeat is not None:
                group.create_task(self.heartbeat.run())
            group.create_task(self._events())
            group.create_task(self.loop.tick(self.config.tick, lambda: self.watcher.cache))
            if self.migrations is not None:
                group.create_task(self.migrations.run())
            await self.watcher.synced.wait()
            # A node that comes back destroys its stale copies (VMs restarted elsewhere
            # while it was lost) before its work loop may start anything.
            await self.orphans.first_sweep()
            group.create_task(self.loop.run())
            # After the first list: declare the VMs' segments (adopting and pruning what an
            # earlier agent left once every user of segments has declared its needs).
            group.create_task(self._sync_segments())
            group.create_task(self.orphans.run())

    async def _sync_segments(self) -> None:
        """Declare the VMs' segments: the shared set prunes what neither VMs nor VRFs
        need and publishes the node's segment set. VMs migrating here (``incoming``) count
        too, so the segments the target prepared are not pruned before the domain
        arrives."""
        needed = placing.needed_segments(
            itertools.chain(self.watcher.cache.values(), self.incoming.cache.values()),
            self.config.networks,
            managed=self.config.managed_networks,
        )
        await self.node_segments.set_needed(segmenting.VMS, needed)
