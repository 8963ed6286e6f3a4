"""The agent's VM loop: one worker pass per VM key = read, decide, act, report once.

Each pass gathers a small scope (the VM object from the watch cache, the domain from
libvirt), asks :func:`reconciling.decide` what to do, runs the actions through the
adapters (disks, segments, libvirt), and applies the agent's status once, only when it
changed. Keys come from the watch, libvirt lifecycle events and a periodic tick; a key is
never processed by two workers at once, and repeated wake-ups coalesce.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from kubevisor.agent import disks, domainxml, leases, reconciling, segmenting, status, watching
from kubevisor.agent.libvirt import DomainInfo, Hypervisor, HypervisorError
from kubevisor.agent.netlink import segments as netsegments
from kubevisor.api import conditions, groups, kinds, machines, naming, virtualmachines

logger = logging.getLogger(__name__)

Phase = virtualmachines.VirtualMachinePhase
#: Desired states that want the domain up.
_WANTED_UP = frozenset({virtualmachines.DesiredState.RUNNING, virtualmachines.DesiredState.PAUSED})
#: Phases in which the VM may still use its NICs' segments (so they are not pruned).
_SEGMENTS_IN_USE = frozenset({Phase.RUNNING, Phase.PAUSED, Phase.STOPPING, Phase.STARTING})
#: Phases reported without a resolved machine (nothing to run).
_AT_REST = frozenset({Phase.STOPPED, *virtualmachines.GUEST_STOPPED})

Key = watching.Key


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


@dataclasses.dataclass
class Scope:
    """One VM's pass: the inputs read once, handed to the phase functions."""

    key: Key
    obj: dict[str, Any]
    identity: domainxml.Identity
    machine: machines.MachineSpec | None
    status: dict[str, Any]
    domain: DomainInfo | None
    started_at: str | None = None
    applied_restart_token: str | None = None
    ready_reason: str | None = None
    message: str = ""
    network_states: list[netsegments.SegmentState] = dataclasses.field(default_factory=list)


def _now() -> str:
    return conditions.format_time(datetime.now(UTC))


def nic_segments(
    machine: machines.MachineSpec,
    networks: dict[str, str],
    *,
    managed: frozenset[str] = frozenset(),
) -> list[netsegments.Segment]:
    """The segment of each NIC (pure). Raises KeyError for a network the node lacks."""
    return [
        netsegments.segment_of(nic.network, nic.vlan, networks, managed) for nic in machine.nics
    ]


def nic_placements(
    machine: machines.MachineSpec,
    identity: domainxml.Identity,
    networks: dict[str, str],
    *,
    managed: frozenset[str] = frozenset(),
) -> tuple[domainxml.NICPlacement, ...]:
    """Tap, bridge and MAC of each NIC (pure)."""
    return tuple(
        domainxml.NICPlacement(
            name=nic.name,
            mac=(nic.mac or naming.mac(identity.uid, nic.name)).lower(),
            bridge=segment.bridge,
            tap=naming.tap(identity.uid, index),
            model=nic.model,
        )
        for index, (nic, segment) in enumerate(
            zip(machine.nics, nic_segments(machine, networks, managed=managed), strict=True)
        )
    )


class Agent:
    """Runs the VM loop of one node (see module docstring)."""

    def __init__(
        self,
        api: client.ApiClient,
        hypervisor: Hypervisor,
        config: AgentConfig,
        *,
        segments: netsegments.Segments,
        heartbeat: leases.Heartbeat | None = None,
        node_segments: segmenting.NodeSegments | None = None,
    ) -> None:
        self.api = api
        self.hv = hypervisor
        self.config = config
        self.segments = segments
        self.heartbeat = heartbeat
        self.status = status.StatusWriter(api)
        self._custom: Any = client.CustomObjectsApi(api)
        self._core: Any = client.CoreV1Api(api)
        self.watcher = watching.VMWatcher(api, node=config.node, on_change=self.enqueue)
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._busy: set[Key] = set()
        self._again: set[Key] = set()
        self._shutdown_at: dict[Key, float] = {}
        self.node_segments = node_segments or segmenting.NodeSegments(
            segments,
            users=(segmenting.VMS,),
            networks=config.networks,
            managed=config.managed_networks,
            heartbeat=heartbeat,
        )
        """The node's segment set, shared with the VRF loop when the agent runs both."""
        self._clone_lock = asyncio.Lock()
        self._holding: set[Key] = set()
        """Clone sources suspended for a copy: their own passes wait (see _copy_clones)."""
        self._seen: set[Key] = set()
        self.passes = 0
        self.orphans_removed: list[str] = []

    # -- queue -----------------------------------------------------------------------

    def enqueue(self, key: Key) -> None:
        """Ask for a pass over ``key`` (coalesced with pending ones)."""
        if key in self._busy:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def enqueue_later(self, key: Key, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.enqueue, key)

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._busy.add(key)
            try:
                await self.reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s/%s: reconcile failed; retrying", *key)
                self.enqueue_later(key, 5.0)
            finally:
                self._busy.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.enqueue(key)

    async def _events(self) -> None:
        while True:
            event = await self.hv.next_event()
            key = naming.vm_of_domain(event.name)
            if key is not None and key in self.watcher.cache:
                self.enqueue(key)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick)
            for key in list(self.watcher.cache):
                self.enqueue(key)

    async def run(self) -> None:
        """Run watch, heartbeat, events, tick and workers until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.watcher.run())
            if self.heartbeat is not None:
                group.create_task(self.heartbeat.run())
            group.create_task(self._events())
            group.create_task(self._ticker())
            for _ in range(self.config.workers):
                group.create_task(self._worker())
            await self.watcher.synced.wait()
            group.create_task(self._prune_segments_after_sync())
            group.create_task(self._orphan_sweeper())

    async def _prune_segments_after_sync(self) -> None:
        """After the first list: declare the VMs' segments (adopting and pruning what an
        earlier agent left once every user of segments has declared its needs)."""
        await self._sync_segments()

    # -- orphans -----------------------------------------------------------------------

    async def _orphan_sweeper(self) -> None:
        """Sweep once after the first list, then every ``orphan_sweep`` seconds."""
        while True:
            try:
                await self.sweep_orphans()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("orphan sweep failed; trying again next time")
            await asyncio.sleep(self.config.orphan_sweep)

    async def sweep_orphans(self) -> list[str]:
        """Destroy and undefine domains we created whose VirtualMachine no longer exists.

        An orphan is a domain carrying our metadata (VM identity) for which no VM object
        with that uid exists: the VM was deleted while this agent was down and its
        finalizer removed by hand, or the agent died between undefine and finalizer
        removal. The VM is gone, so nothing will ever start the domain again, and a
        running orphan holds memory and a tap.

        Its disks are kept on purpose: nobody asked for them to be deleted (the delete
        that did happen skipped the agent), and a disk is the one thing that cannot be
        recreated. They are logged with the removal so an operator can delete them.
        Domains without our metadata are never touched.
        """
        removed: list[str] = []
        for info in await self.hv.list():
            ident = info.identity
            if ident is None:
                continue
            key = (ident.namespace, ident.name)
            cached = self.watcher.cache.get(key)
            if cached is not None and (cached.get("metadata") or {}).get("uid") == ident.uid:
                continue
            if key in self._busy or key in self._holding:
                continue
            try:
                obj = await self._custom.get_namespaced_custom_object(
                    groups.GROUP, groups.VERSION, key[0], kinds.VIRTUALMACHINE.plural, key[1]
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
                obj = None
            if obj is not None and (obj.get("metadata") or {}).get("uid") == ident.uid:
                continue  # the VM exists (placed elsewhere, or migrating here): not ours to judge
            own_dirs = [
                str(root / key[0] / key[1])
                for root in (
                    self.config.layout.state_dir / "disks",
                    *(
                        [self.config.layout.shared_dir / "disks"]
                        if self.config.layout.shared_dir is not None
                        else []
                    ),
                )
            ]
            logger.warning(
                "%s/%s: domain %s (VM uid %s) is orphaned: its VirtualMachine is gone;"
                " destroying and undefining it, KEEPING its disks (delete them by hand"
                " if unwanted: %s)",
                *key,
                info.name,
                ident.uid,
                ", ".join(own_dirs),
            )
            await self.hv.destroy(info.name)
            await self.hv.undefine(info.name)
            removed.append(info.name)
        self.orphans_removed.extend(removed)
        return removed

    # -- one pass --------------------------------------------------------------------

    def _scope(self, key: Key, obj: dict[str, Any], domain: DomainInfo | None) -> Scope:
        meta = obj.get("metadata") or {}
        st = obj.get("status") or {}
        machine = None
        if st.get("machine") is not None:
            try:
                machine = machines.MachineSpec.model_validate(st["machine"])
            except ValidationError as exc:
                logger.warning("%s/%s: status.machine invalid: %s", *key, exc)
        return Scope(
            key=key,
            obj=obj,
            identity=domainxml.Identity(namespace=key[0], name=key[1], uid=str(meta.get("uid"))),
            machine=machine,
            status=st,
            domain=domain,
            started_at=st.get("startedAt"),
            applied_restart_token=st.get("appliedRestartToken"),
        )

    async def reconcile(self, key: Key) -> None:
        """Read, decide, act, report for one VM."""
        self.passes += 1
        obj = self.watcher.cache.get(key)
        if obj is None:
            self._shutdown_at.pop(key, None)
            self._seen.discard(key)
            return
        if key in self._holding:
            return  # suspended for a clone's copy; enqueued again when the copy is done
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if labels.get(groups.LABEL_NODE) != self.config.node:
            return  # re-check: the server-side selector is the filter, this the guard
        identity_name = naming.domain_name(*key)
        domain = await self.hv.lookup(identity_name)
        scope = self._scope(key, obj, domain)
        if (
            domain is not None
            and domain.identity is not None
            and domain.identity.uid != scope.identity.uid
        ):
            logger.warning("%s/%s: removing domain of an older VM with this name", *key)
            await self.hv.destroy(domain.name)
            await self.hv.undefine(domain.name)
            scope.domain = None

        deleting = bool((obj.get("metadata") or {}).get("deletionTimestamp"))
        restart_token = scope.status.get("restartToken")
        shutdown_at = self._shutdown_at.get(key)
        active = scope.domain is not None and reconciling.DomainView(scope.domain.state).active
        if not active:
            self._shutdown_at.pop(key, None)
            shutdown_at = None
        observed = reconciling.Observed(
            desired=scope.status.get("desiredState"),
            has_machine=scope.machine is not None,
            deleting=deleting,
            restart_pending=restart_token is not None
            and restart_token != scope.applied_restart_token,
            phase=scope.status.get("phase"),
            domain=None
            if scope.domain is None
            else reconciling.DomainView(
                state=str(scope.domain.state), guest_shut_down=scope.domain.guest_shut_down
            ),
            shutdown_requested=shutdown_at is not None,
            shutdown_timed_out=shutdown_at is not None
            and time.monotonic() - shutdown_at > self.config.stop_timeout,
        )
        plan = reconciling.decide(observed)
        if deleting and groups.AGENT_FINALIZER not in (
            (obj.get("metadata") or {}).get("finalizers") or []
        ):
            return  # already cleaned up; the controller finishes the delete
        if key in self._holding:
            return  # a clone's copy suspended it while we looked: nothing may resume it now
        first_pass = key not in self._seen
        self._seen.add(key)
        phase = plan.phase
        for action in plan.actions:
            ok = await self._act(action, scope, restart_token)
            if not ok:
                phase = Phase.STARTING
                self.enqueue_later(key, 10.0)
                break
        if plan.requeue:
            self.enqueue_later(key, 1.0)
        if deleting or phase is None:
            return
        wrote = await self._report(scope, phase)
        if first_pass and active and not plan.actions:
            logger.info(
                "%s/%s: adopted running domain %s; status %s",
                *key,
                identity_name,
                "updated" if wrote else "unchanged (no write)",
            )
        if not plan.actions and phase in status.UP:
            return
        await self._sync_segments()

    async def _act(
        self, action: reconciling.Action, scope: Scope, restart_token: str | None
    ) -> bool:
        """Run one action; False when it could not be done for a reason the user can fix."""
        name = scope.identity.domain_name
        A = reconciling.Action
        logger.info("%s/%s: %s", *scope.key, action)
        if action is A.ENSURE:
            return await self._ensure(scope)
        if action is A.START:
            await self.hv.start(name)
            scope.started_at = _now()
        elif action is A.SHUTDOWN:
            await self.hv.shutdown(name)
            self._shutdown_at[scope.key] = time.monotonic()
        elif action is A.DESTROY:
            await self.hv.destroy(name)
        elif action is A.SUSPEND:
            await self.hv.suspend(name)
        elif action is A.RESUME:
            await self.hv.resume(name)
        elif action is A.UNDEFINE:
            await self.hv.undefine(name)
        elif action is A.CLEANUP:
            await self._cleanup(scope)
        elif action is A.APPLY_RESTART:
            scope.applied_restart_token = restart_token
        return True

    async def _ensure(self, scope: Scope) -> bool:
        """Finalizer, disks, segments, domain definition (from status.machine)."""
        assert scope.machine is not None
        await self._add_finalizer(scope.obj)
        try:
            plans = disks.plan(scope.machine, scope.identity, self.config.layout)
            if disks.clone_sources(plans):
                await self._copy_clones(scope, plans)
            for disk in plans:
                await disks.ensure(disk)
        except disks.DiskError as exc:
            scope.ready_reason, scope.message = exc.reason, str(exc)
            return False
        try:
            wanted = nic_segments(
                scope.machine, self.config.networks, managed=self.config.managed_networks
            )
        except KeyError as exc:
            scope.ready_reason = conditions.Reason.NETWORK_UNAVAILABLE
            scope.message = f"network {exc.args[0]!r} is not offered by node {self.config.node}"
            return False
        for segment in wanted:
            try:
                state = await self.node_segments.ensure(segment)
            except netsegments.SegmentError as exc:
                scope.ready_reason = conditions.Reason.NETWORK_UNAVAILABLE
                scope.message = str(exc)
                return False
            scope.network_states.append(state)
        password = await self._vnc_password(scope)
        self.config.console_dir.mkdir(parents=True, exist_ok=True)
        placement = domainxml.Placement(
            disks=disks.placements(plans),
            nics=nic_placements(
                scope.machine,
                scope.identity,
                self.config.networks,
                managed=self.config.managed_networks,
            ),
            console_log=self.config.console_dir / f"{scope.identity.domain_name}.log"
            if scope.machine.console.serial
            else None,
            vnc_password=password,
        )
        try:
            xml = domainxml.render(
                scope.machine,
                scope.identity,
                placement,
                self.config.facts,
                domain_uuid=scope.domain.uuid if scope.domain is not None else None,
            )
        except domainxml.DomainXMLError as exc:
            scope.ready_reason, scope.message = conditions.Reason.INVALID_SPEC, str(exc)
            return False
        if scope.domain is None or not reconciling.DomainView(scope.domain.state).active:
            try:
                scope.domain = await self.hv.define(xml)
            except HypervisorError as exc:
                scope.ready_reason, scope.message = conditions.Reason.FAILED, str(exc)
                return False
        return True

    async def _copy_clones(self, scope: Scope, plans: list[disks.DiskPlan]) -> None:
        """Copy a clone's disks from its source VM(s), crash-consistently.

        A source domain running on this node is suspended, all its disks are copied
        (``qemu-img convert -U``, so every disk is from the same instant), and it is
        resumed — also when a copy fails. While it is held, the source's own passes are
        skipped (otherwise the paused domain would look like something to resume); it is
        enqueued again afterwards. A source that is off, or already paused by its user,
        is copied as it is and left as it was. One copy at a time per agent, so two
        clones of one source never interleave their suspend/resume.
        """
        async with self._clone_lock:
            held: list[domainxml.Identity] = []
            try:
                for source in disks.clone_sources(plans):
                    info = await self.hv.lookup(source.domain_name)
                    if info is None or info.state != "running":
                        continue
                    key = (source.namespace, source.name)
                    self._holding.add(key)
                    held.append(source)
                    logger.info(
                        "%s/%s: suspending clone source %s for a point-in-time copy",
                        *scope.key,
                        source.domain_name,
                    )
                    await self.hv.suspend(source.domain_name)
                for disk in plans:
                    if disk.source_vm is not None and disk.base is not None:
                        await disks.ensure(disk)
            finally:
                for source in held:
                    key = (source.namespace, source.name)
                    try:
                        await self.hv.resume(source.domain_name)
                    except HypervisorError as exc:
                        logger.error("could not resume clone source %s: %s", source, exc)
                    finally:
                        self._holding.discard(key)
                        self.enqueue(key)
            if held:
                logger.info(
                    "%s/%s: copied disks of %s; resumed the source(s)",
                    *scope.key,
                    ", ".join(s.domain_name for s in held),
                )

    async def _vnc_password(self, scope: Scope) -> str | None:
        assert scope.machine is not None
        ref = scope.machine.display.password_secret_ref
        if ref is None or not scope.machine.display.vnc:
            return None
        secret = await self._core.read_namespaced_secret(ref.name, scope.identity.namespace)
        raw = (secret.data or {}).get(ref.key)
        return base64.b64decode(raw).decode() if raw else None

    async def _cleanup(self, scope: Scope) -> None:
        """Delete the VM's own disks (never bases, never retained), prune segments, and
        release the VM by removing our finalizer."""
        if scope.machine is not None:
            try:
                plans = disks.plan(scope.machine, scope.identity, self.config.layout)
            except disks.DiskError:
                # A base image vanished: plan without bases (the files are still ours).
                bare = scope.machine.model_copy(
                    update={
                        "disks": [
                            d.model_copy(update={"image": None, "size": d.size or "1"})
                            for d in scope.machine.disks
                        ]
                    }
                )
                plans = disks.plan(bare, scope.identity, self.config.layout)
            removed = await asyncio.to_thread(
                disks.remove, disks.deletable(plans, self.config.layout)
            )
            logger.info("%s/%s: removed disks %s", *scope.key, [str(p) for p in removed])
        self.watcher.cache.pop(scope.key, None)
        await self._sync_segments()
        await self._remove_finalizer(scope.obj)

    # -- finalizer ---------------------------------------------------------------------

    async def _patch_finalizers(self, obj: dict[str, Any], ops: list[dict[str, Any]]) -> None:
        meta = obj["metadata"]
        try:
            await self._custom.patch_namespaced_custom_object(
                groups.GROUP,
                groups.VERSION,
                meta["namespace"],
                kinds.VIRTUALMACHINE.plural,
                meta["name"],
                ops,
                _content_type="application/json-patch+json",
            )
        except ApiException as exc:
            if exc.status in (404, 409, 422):  # gone or changed under us: next pass decides
                logger.info(
                    "%s/%s: finalizer patch skipped (%s)",
                    meta["namespace"],
                    meta["name"],
                    exc.status,
                )
                return
            raise

    async def _add_finalizer(self, obj: dict[str, Any]) -> None:
        finalizers = (obj.get("metadata") or {}).get("finalizers")
        if finalizers and groups.AGENT_FINALIZER in finalizers:
            return
        if finalizers:
            ops = [
                {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                {"op": "add", "path": "/metadata/finalizers/-", "value": groups.AGENT_FINALIZER},
            ]
        else:
            ops = [{"op": "add", "path": "/metadata/finalizers", "value": [groups.AGENT_FINALIZER]}]
        await self._patch_finalizers(obj, ops)

    async def _remove_finalizer(self, obj: dict[str, Any]) -> None:
        finalizers = (obj.get("metadata") or {}).get("finalizers") or []
        if groups.AGENT_FINALIZER not in finalizers:
            return
        index = finalizers.index(groups.AGENT_FINALIZER)
        path = f"/metadata/finalizers/{index}"
        await self._patch_finalizers(
            obj,
            [
                {"op": "test", "path": path, "value": groups.AGENT_FINALIZER},
                {"op": "remove", "path": path},
            ],
        )

    # -- segments ----------------------------------------------------------------------

    def _needed_segments(self) -> set[netsegments.Segment]:
        """Segments of the VMs on this node that are (to be) running."""
        needed: set[netsegments.Segment] = set()
        for obj in self.watcher.cache.values():
            st = obj.get("status") or {}
            if (obj.get("metadata") or {}).get("deletionTimestamp"):
                continue
            if st.get("desiredState") not in _WANTED_UP and st.get("phase") not in _SEGMENTS_IN_USE:
                continue
            for nic in (st.get("machine") or {}).get("nics") or []:
                network = nic.get("network")
                if network in self.config.networks:
                    needed.add(
                        netsegments.segment_of(
                            network,
                            nic.get("vlan"),
                            self.config.networks,
                            self.config.managed_networks,
                        )
                    )
        return needed

    async def _sync_segments(self) -> None:
        """Declare the VMs' segments: the shared set prunes what neither VMs nor VRFs
        need and publishes the node's segment set."""
        await self.node_segments.set_needed(segmenting.VMS, self._needed_segments())

    # -- status ------------------------------------------------------------------------

    async def _report(self, scope: Scope, phase: Phase) -> bool:
        """Apply the agent's status; True when it was written (not a no-op)."""
        assert scope.machine is not None or phase in _AT_REST
        st = scope.status
        interfaces: list[dict[str, Any]] = []
        display = None
        domain_uuid = st.get("domainUUID")
        if phase in status.UP or scope.domain is not None:
            fresh = await self.hv.lookup(scope.identity.domain_name)
            if fresh is not None:
                domain_uuid = fresh.uuid
                live = domainxml.live_facts(fresh.xml)
                if live.vnc_port is not None and phase in status.UP:
                    display = {"type": "vnc", "host": live.vnc_host, "port": live.vnc_port}
                if scope.machine is not None:
                    for nic in scope.machine.nics:
                        entry: dict[str, Any] = {"name": nic.name, "network": nic.network}
                        if nic.vlan is not None:
                            entry["vlan"] = nic.vlan
                        mac = live.macs.get(nic.name) or nic.mac
                        if mac:
                            entry["mac"] = mac.lower()
                        if nic.name in live.taps and phase in status.UP:
                            entry["tap"] = live.taps[nic.name]
                        interfaces.append(entry)
        running_at = st.get("runningAt")
        if phase == Phase.RUNNING and (
            running_at is None or scope.started_at != st.get("startedAt")
        ):
            running_at = _now()
        network_ready: bool | None = None
        network_message = ""
        if scope.machine is not None and scope.machine.nics and phase in status.UP:
            local = [s for s in scope.network_states if not s.uplinked]
            network_ready = True
            network_message = "; ".join(s.message for s in local)
        console = self.config.console_dir / f"{scope.identity.domain_name}.log"
        report = status.Report(
            phase=phase,
            interfaces=tuple(interfaces),
            display=display,
            console_log=str(console)
            if scope.machine is not None and scope.machine.console.serial
            else None,
            domain_uuid=domain_uuid,
            started_at=scope.started_at,
            running_at=running_at,
            applied_restart_token=scope.applied_restart_token,
            ready_reason=scope.ready_reason,
            message=scope.message,
            network_ready=network_ready,
            network_message=network_message,
        )
        # NetworkReady message is kept across passes (segment states are only known on ENSURE).
        previous = conditions.get_condition(
            st.get("conditions") or [], conditions.ConditionType.NETWORK_READY
        )
        if (
            previous is not None
            and not network_message
            and network_ready
            and not scope.network_states
        ):
            report = dataclasses.replace(report, network_message=str(previous.get("message", "")))
        generation = (scope.obj.get("metadata") or {}).get("generation")
        own = status.desired_status(
            report, current=st, generation=generation, now=datetime.now(UTC)
        )
        result = await self.status.apply(
            namespace=scope.key[0], name=scope.key[1], own=own, current=st
        )
        if result is not None and scope.key in self.watcher.cache:
            # Keep the cache ahead of the watch so the next pass sees our own write.
            self.watcher.cache[scope.key] = result
        return result is not None
