"""The agent's VRF loop: watch VRF objects, realize this node's share, report per node.

Level-based, on the runtime shared with the VM side (one informer, one work loop with a
single key: a pass is node-wide). Every pass (on a watch event, or every ``resync``
seconds) compares all VRF objects with what the node's kernel holds
(``VRFRealizer.observe``): it realizes the VRFs selected onto this node, removes
realized VRFs nobody wants any more (also those deleted while the agent was down), and
repairs drift (a route deleted by hand comes back on the next pass). Each agent writes
only ``status.nodes.<its node>`` with a JSON merge patch, and only when the entry
changed, so many nodes never fight over one object and the controller's server-side-
applied fields are untouched.

Segments: with a shared :class:`segmenting.NodeSegments` (as ``kubevisor-agent`` runs
it) the loop sets up the segment bridges its VRFs' interfaces need before realizing them
(a managed network's bridge, a VLAN bridge) and declares them, so the VM loop never prunes
a bridge only a VRF uses, and the node's segment set includes them.

VRF objects carry no node label (selection is by ``spec.nodeSelector`` against this
node's labels), so the watch is over all VRFs; they are few and small.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubevisor.agent import metrics, segmenting, segments
from kubevisor.agent.kernel import probing, vrfrealizing
from kubevisor.agent.kube import ApiClient, events, statuses, watches
from kubevisor.agent.runtime import informing, looping
from kubevisor.agent.vrfs import daemons, planning, selecting, specs, supervising
from kubevisor.api import conditions, kinds, nodes, vrfs

logger = logging.getLogger(__name__)

PLURAL = kinds.VRF.plural
DEFAULT_RESYNC = 30.0
#: The one key of the VRF work loop: a pass is over every VRF and the node's kernel.
NODE_PASS: informing.Key = ("", "*")

Key = informing.Key
BridgeFor = Callable[[str, int | None], str]


def bridge_mapper(networks: Mapping[str, str]) -> BridgeFor:
    """The VM agent's network -> bridge mapping (``--network NAME=BRIDGE``) for VRF
    interfaces, so a VM NIC on segment X and the VRF gateway for X share one bridge. A VLAN
    is the VM agent's VLAN bridge of that network; an unknown network maps to its own
    name, which the realizer then reports as a missing segment."""

    def bridge_for(network: str, vlan: int | None) -> str:
        base = networks.get(network, network)
        return base if vlan is None else segments.vlan_bridge_name(base, vlan)

    return bridge_for


def vrf_segments(
    vrf_specs: Iterable[vrfs.VRFSpec],
    networks: Mapping[str, str],
    managed: Iterable[str] = (),
) -> set[segments.Segment]:
    """The node segments the interfaces of ``vrf_specs`` plug into (pure). Interfaces on
    a network the node does not offer are left out: the realizer reports them as
    ``SegmentMissing``."""
    bridges = dict(networks)
    managed = frozenset(managed)
    return {
        segments.segment_of(iface.network, iface.vlan, bridges, managed)
        for spec in vrf_specs
        for iface in spec.interfaces
        if iface.network is not None and iface.network in bridges
    }


def _age(entry: Mapping[str, Any] | None, now: datetime) -> float | None:
    text = (entry or {}).get("lastSyncTime")
    if not text:
        return None
    try:
        then = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (now - then).total_seconds()


class VRFAgent:
    """One node's VRF loop. ``kernel_has_vrf``/``kernel_has_8021q``: facts probed once
    (None: probe the kernel)."""

    def __init__(
        self,
        api: ApiClient,
        *,
        node: str,
        labels: Mapping[str, str],
        realizer: vrfrealizing.VRFRealizer,
        bridge_for: BridgeFor,
        resync: float = DEFAULT_RESYNC,
        kernel_has_vrf: bool | None = None,
        kernel_has_8021q: bool | None = None,
        node_segments: segmenting.NodeSegments | None = None,
        daemons_installed: frozenset[str] | None = None,
    ) -> None:
        self.node = node
        self.daemons_installed = daemons_installed
        self.node_segments = node_segments
        self.labels = dict(labels)
        self.realizer = realizer
        self.bridge_for = bridge_for
        self.resync = resync
        self.kernel_has_vrf = kernel_has_vrf
        self.kernel_has_8021q = kernel_has_8021q
        self.loop = looping.WorkLoop(
            self._pass, workers=1, retry=1.0, fingerprint=lambda _key: self._fingerprint()
        )
        self.watcher = informing.Informer(
            watches.ListWatch(api, PLURAL), on_change=lambda _key: self.loop.enqueue(NODE_PASS)
        )
        self._entries = statuses.NodeEntryWriter(api, plural=PLURAL, node=node)
        self._events = events.Recorder(api, kind=kinds.VRF.kind, node=node)
        metrics.count_vrf_routes(lambda: self.watcher.cache.values(), node=node)
        self.supervisor = supervising.Supervisor(
            realizer, on_change=lambda: self.loop.enqueue(NODE_PASS)
        )
        self.passes = 0

    def _fingerprint(self) -> str:
        """What the node pass acts on (every VRF's spec and generation): a change resets
        the pass's backoff."""
        return json.dumps(
            sorted(
                (str(k), (o.get("metadata") or {}).get("generation"), o.get("spec"))
                for k, o in self.watcher.cache.items()
            ),
            default=str,
        )

    async def _facts(self) -> tuple[bool, bool]:
        if self.daemons_installed is None:
            self.daemons_installed = await asyncio.to_thread(supervising.installed)
        if self.kernel_has_vrf is None:
            self.kernel_has_vrf = await asyncio.to_thread(probing.detect_backend) == "vrf"
        if self.kernel_has_8021q is None:
            self.kernel_has_8021q = await asyncio.to_thread(probing.cached_8021q)
        return self.kernel_has_vrf, self.kernel_has_8021q

    async def sync_once(self) -> None:
        """One level-based pass over every VRF object and the node's kernel."""
        has_vrf, has_8021q = await self._facts()
        objs = dict(self.watcher.cache)
        selection = selecting.select(objs.values(), labels=nodes.node_labels(self.labels))
        observed = await self.realizer.observe()
        plan = planning.plan_node(
            {
                name: planning.Assigned(sel.spec, sel.table)
                for name, sel in selection.wanted.items()
            },
            bridge_for=self.bridge_for,
            kernel_has_vrf=has_vrf,
            kernel_has_8021q=has_8021q,
        )
        wanted_segments = await self._ensure_segments(
            [selection.wanted[name].spec for name in plan.desired]
        )
        # waiting VRFs (the controller has not decided their generation) keep what they have
        for name in sorted(set(observed) - set(plan.desired) - set(selection.waiting)):
            logger.info("removing VRF %s from node %s", name, self.node)
            await self.supervisor.stop(name)
            await self.realizer.remove(name)
        now = datetime.now(UTC)
        stamp = conditions.format_time(now)
        entries: dict[Key, dict[str, Any]] = {}
        for name, desired in plan.desired.items():
            sel = selection.wanted[name]
            status: specs.NodeVRFStatus = await self.realizer.apply(desired)
            status = await self._daemon(name, sel.spec, desired, status)
            entries[sel.key] = selecting.entry(status, generation=sel.generation, now=stamp)
        for name, problem in plan.refused.items():
            sel = selection.wanted[name]
            entries[sel.key] = selecting.entry(
                None, generation=sel.generation, now=stamp, problem=problem, table=sel.table
            )
        for wait in selection.waiting.values():
            entries[wait.key] = selecting.entry(
                None, generation=wait.generation, now=stamp, problem=wait.problem
            )
        for key, obj in objs.items():
            have = ((obj.get("status") or {}).get("nodes") or {}).get(self.node)
            if key in entries:
                if selecting.needs_write(have, entries[key], age_seconds=_age(have, now)):
                    await self._entries.patch(key[0], key[1], entries[key])
                failed = selecting.failure(have, entries[key])
                if failed is not None:  # the node's own word on why it is not Ready
                    await self._events.warning(obj, *failed)
            elif have is not None:
                logger.info(
                    "VRF %s/%s: removing node %s's status entry: %s",
                    key[0],
                    key[1],
                    self.node,
                    selecting.why_not_selected(obj, labels=nodes.node_labels(self.labels)),
                )
                await self._entries.patch(key[0], key[1], None)
        await self.supervisor.sweep(set(plan.desired) | set(selection.waiting))
        if self.node_segments is not None:
            await self.node_segments.set_needed(segmenting.VRFS, wanted_segments)
        self.passes += 1

    async def _daemon(
        self,
        name: str,
        spec: vrfs.VRFSpec,
        desired: planning.DesiredVRF,
        status: specs.NodeVRFStatus,
    ) -> specs.NodeVRFStatus:
        """Run the VRF's routing daemon once its context is realized, and fold its state
        into the node entry: a daemon that cannot run, was refused its config or is down
        keeps the VRF from Ready. A VRF whose kernel part failed leaves its daemon as is."""
        problem = planning.daemon_problem(
            spec, installed=self.daemons_installed or frozenset(), backend=desired.backend
        )
        if not status["ready"]:
            return status
        status = status.copy()
        if problem is None:
            device = self.realizer.naming.vrf_device(name) if desired.backend == "vrf" else None
            wanted = daemons.wanted(spec, desired.table, device)
            report = await self.supervisor.ensure(name, wanted)
            if report.status is not None:
                status["daemon"] = report.status
            problem = report.problem
        else:
            await self.supervisor.stop(name)
        if problem is not None:
            status["ready"] = False
            status["reason"] = problem.reason
            status["message"] = problem.message
        return status

    async def _ensure_segments(self, vrf_specs: list[vrfs.VRFSpec]) -> set[segments.Segment]:
        """Set up the segment bridges of the VRFs to realize (with a shared segment set);
        a failure is left for the realizer to report as ``SegmentMissing``."""
        if self.node_segments is None:
            return set()
        wanted = vrf_segments(vrf_specs, self.node_segments.networks, self.node_segments.managed)
        for segment in sorted(wanted, key=lambda s: (s.network, s.vlan or 0)):
            try:
                await self.node_segments.ensure(segment)
            except segments.SegmentError as exc:
                logger.warning("VRF segment %s on node %s: %s", segment.name, self.node, exc)
        return wanted

    async def _pass(self, key: Key) -> None:
        if not self.watcher.synced.is_set():
            return  # the first list comes first; it enqueues a pass itself
        await self.sync_once()  # a failure backs off in the work loop (1 s doubling to 5 min)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Watch and sync until ``stop`` is set (or cancelled): a pass after the first list,
        on every change (coalesced) and every ``resync`` seconds. Realized VRFs stay: an
        agent restart must not interrupt the data plane."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[Any]] = [
            loop.create_task(self.watcher.run()),
            loop.create_task(self.loop.run()),
        ]
        try:
            synced = loop.create_task(self.watcher.synced.wait())
            stopping = loop.create_task(stop.wait())
            tasks += [synced, stopping]
            await asyncio.wait({synced, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not stop.is_set():
                self.loop.enqueue(NODE_PASS)  # also with no VRF at all: remove leftovers
                tasks.append(loop.create_task(self.loop.tick(self.resync, lambda: [NODE_PASS])))
                await stopping
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            self.supervisor.close()  # the daemons keep running: a restart adopts them


async def run_vrfs(
    *,
    node: str,
    labels: dict[str, str],
    api_client: ApiClient,
    node_netns: str | None,
    bridge_for: BridgeFor,
    resync: float = DEFAULT_RESYNC,
    stop: asyncio.Event | None = None,
    node_segments: segmenting.NodeSegments | None = None,
) -> None:
    """The agent's VRF task: realize this node's VRFs until ``stop`` (or cancellation)."""
    realizer = vrfrealizing.VRFRealizer(node_netns=node_netns)
    try:
        agent = VRFAgent(
            api_client,
            node=node,
            labels=labels,
            realizer=realizer,
            bridge_for=bridge_for,
            resync=resync,
            node_segments=node_segments,
        )
        await agent.run(stop)
    finally:
        realizer.close()
