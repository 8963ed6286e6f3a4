"""The process's placer: choose a node and reserve it in one step (``Placer``).

The decisions are the pure functions in ``placing``, the bookkeeping rules the
``ledger``'s; this module feeds them from the API (the VM list, node Leases).
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from datetime import datetime
from typing import Any

from kubevisor.api import kinds, nodes, rebalancepolicies
from kubevisor.controller.kube import client as kube
from kubevisor.controller.placement import ledger, placing

#: vCPUs per reported core placement allows (KUBEVISOR_CPU_OVERCOMMIT, default 1).
CPU_OVERCOMMIT = float(os.environ.get("KUBEVISOR_CPU_OVERCOMMIT", "1"))


class Placer:
    """Process-wide placement state: the ledger, a short-lived cache of node Leases.

    Placement reads the ledger's per-node totals, picks a node and reserves it in one
    step with no ``await`` in between (and under a plain lock, so it stays one step
    should a handler ever run in a thread); the status write happens after, outside.
    The ledger is primed by one full list before the first placement, refreshed by a
    full list every ``RESYNC_SECONDS``, and otherwise fed by the VM watch events.
    """

    LEASE_TTL = 1.0
    """Seconds a Lease list is reused: agents renew every 10 s and publish capacity
    rarely, so a placement burst needs one list per second, not one per VM."""
    RESYNC_SECONDS = 60.0

    def __init__(self) -> None:
        self.ledger = ledger.Ledger()
        self._decide = threading.Lock()
        self._refresh: asyncio.Lock | None = None
        self._leases: list[nodes.NodeLease] = []
        """The last Lease list, parsed once (capacity JSON, labels) for every placement
        until the next list."""
        self._cordoned: frozenset[str] = frozenset()
        self._powered_off: frozenset[str] = frozenset()
        self._leases_at = -math.inf
        self._synced_at = -math.inf

    def _refresh_lock(self) -> asyncio.Lock:
        if self._refresh is None:
            self._refresh = asyncio.Lock()
        return self._refresh

    def observe(self, obj: dict[str, Any]) -> None:
        """A VM watch event (not a deletion)."""
        with self._decide:
            self.ledger.observe(ledger.seen(obj))

    def forget(self, uid: str) -> None:
        """A VM DELETED event."""
        with self._decide:
            self.ledger.forget(uid)

    async def resync(self, api: kube.Kube) -> None:
        """Merge a full VM list into the ledger (priming; healing missed events)."""
        items, rv = await api.list_snapshot(kinds.VIRTUALMACHINE.plural)
        seen = [ledger.seen(vm) for vm in items]
        with self._decide:
            self.ledger.resync(seen, rv=ledger.resource_version(rv))
        self._synced_at = time.monotonic()

    async def ready(self, api: kube.Kube) -> None:
        """Prime the ledger once (and resync it when due) before placing."""
        if self.ledger.primed and time.monotonic() - self._synced_at < self.RESYNC_SECONDS:
            return
        async with self._refresh_lock():
            if not self.ledger.primed or time.monotonic() - self._synced_at >= self.RESYNC_SECONDS:
                await self.resync(api)

    async def nodes(self, api: kube.Kube, *, now: datetime) -> list[placing.Node]:
        """The agents' nodes, from a Lease list (and a Node list for cordons) at most
        ``LEASE_TTL`` seconds old, parsed once per list."""
        if time.monotonic() - self._leases_at >= self.LEASE_TTL:
            async with self._refresh_lock():
                if time.monotonic() - self._leases_at >= self.LEASE_TTL:
                    leases = await api.list_leases(nodes.LEASE_NAMESPACE, nodes.AGENT_SELECTOR)
                    self._leases = [nodes.parse(lease) for lease in leases]
                    node_objects = await api.list_nodes()
                    self._cordoned = placing.cordoned(node_objects)
                    self._powered_off = rebalancepolicies.powered_off(node_objects)
                    self._leases_at = time.monotonic()
        return [
            placing.node_of(lease, now=now, cordoned=self._cordoned, powered_off=self._powered_off)
            for lease in self._leases
        ]

    def choose(
        self, uid: str, request: placing.Request, nodes: list[placing.Node]
    ) -> placing.Placement:
        """Pick a node against the ledger's totals and reserve it, in one step."""
        with self._decide:
            used = self.ledger.totals(exclude=uid)
            result = placing.place(request, nodes, used, cpu_overcommit=CPU_OVERCOMMIT)
            if result.node is not None:
                usage = placing.Usage(request.cpu, request.memory_bytes, request.gpus)
                self.ledger.reserve(uid, result.node, usage)
            return result

    def confirm(self, uid: str, obj: dict[str, Any]) -> None:
        """The status write returned ``obj``: it holds the reservation from its version on."""
        seen = ledger.seen(obj)
        with self._decide:
            entry = self.ledger.entry(uid)
            if entry is not None and entry.pending and seen.node == entry.node:
                self.ledger.confirm(uid, seen.rv)

    def release(self, uid: str) -> None:
        with self._decide:
            self.ledger.release(uid)
