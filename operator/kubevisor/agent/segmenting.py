"""The node's segment set, shared by the VM loop and the VRF loop of one agent.

Why one object: a VM NIC on network ``red`` and a VRF interface on ``red`` must land on
the same bridge, and that bridge (a VLAN bridge, or a managed network's bridge) may be
deleted only when *neither* needs it. Each loop ("user") declares the segments it needs
with :meth:`NodeSegments.set_needed`; a segment is pruned when no user needs it
(:func:`segments.prunable`, pure), and nothing is pruned before every user has declared
its needs once (a just-started VM loop must not delete a bridge the VRF loop has not
claimed yet). The node's segment set (Lease annotation ``kubevisor.io/segments``) is what
is set up and needed by any user.

Netlink calls go through the blocking :class:`bridges.Segments` adapter in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from kubevisor.agent import segments
from kubevisor.agent.kernel import bridges
from kubevisor.agent.kube import leases

logger = logging.getLogger(__name__)

VMS = "vms"
VRFS = "vrfs"
#: Seconds one read of the neighbour table serves the VMs' reports.
ADDRESS_MAX_AGE = 5.0


class NodeSegments:
    """Segments set up on this node and who needs them (see module docstring).

    ``users``: the names of every loop that will call :meth:`set_needed` (pruning waits
    for all of them); ``networks``/``managed``: the agent's network mapping, for adoption
    of what an earlier agent left.
    """

    def __init__(
        self,
        adapter: bridges.Segments,
        *,
        users: Iterable[str] = (VMS,),
        networks: dict[str, str] | None = None,
        managed: Iterable[str] = (),
        heartbeat: leases.Heartbeat | None = None,
    ) -> None:
        self.adapter = adapter
        self.users = frozenset(users)
        self.networks = dict(networks or {})
        self.managed = frozenset(managed)
        self.heartbeat = heartbeat
        self.up: set[segments.Segment] = set()
        self.needs: dict[str, set[segments.Segment]] = {}
        self.lock = asyncio.Lock()
        self._adopted = False
        self._addresses: tuple[float, dict[str, str]] | None = None

    async def guest_addresses(self, *, max_age: float = ADDRESS_MAX_AGE) -> dict[str, str]:
        """MAC -> guest address from the node's neighbour table (one netlink dump, shared
        by every VM's report for ``max_age`` seconds; empty when it cannot be read)."""
        now = time.monotonic()
        if self._addresses is None or now - self._addresses[0] > max_age:
            try:
                pairs = await asyncio.to_thread(self.adapter.neighbours)
            except OSError as exc:
                logger.info("neighbour table unreadable: %s", exc)
                pairs = []
            self._addresses = (now, segments.guest_addresses(pairs))
        return self._addresses[1]

    async def ensure(self, segment: segments.Segment) -> segments.SegmentState:
        """Set up one segment (idempotent); raises :class:`segments.SegmentError`."""
        async with self.lock:
            state = await asyncio.to_thread(self.adapter.ensure, segment)
            self.up.add(segment)
            return state

    def needed(self) -> set[segments.Segment]:
        """Union of every user's needs."""
        return set().union(*self.needs.values()) if self.needs else set()

    async def set_needed(self, user: str, needed: Iterable[segments.Segment]) -> None:
        """Record what ``user`` needs now, prune what nobody needs, publish the set."""
        async with self.lock:
            self.needs[user] = set(needed)
            await self._prune()

    async def _prune(self) -> None:
        if not self.users <= set(self.needs):
            return  # somebody has not said what it needs yet: delete nothing
        if not self._adopted:
            existing = await asyncio.to_thread(
                self.adapter.existing_vlan_segments, self.networks, self.managed
            )
            self.up.update(existing)
            self._adopted = True
        needed = self.needed()
        for segment in segments.prunable(self.up, needed):
            logger.info("removing segment %s (bridge %s): no VM or VRF needs it",
                        segment.name, segment.bridge)  # fmt: skip
            await asyncio.to_thread(self.adapter.remove, segment)
            self.up.discard(segment)
        for segment in self.up - needed:
            self.up.discard(segment)  # administrator bridges: stay, but are not reported
        if self.heartbeat is not None:
            self.heartbeat.set_segments(frozenset(s.name for s in self.up & needed))
