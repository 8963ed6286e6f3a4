"""One VM's pass: read, decide, act, report once.

Each pass gathers a small :class:`Scope` (the VM object from the informer's cache, the
domain from libvirt), asks :func:`reconciling.decide` what to do, runs the actions
through the adapters (disks, segments, libvirt), and applies the agent's status once,
only when it changed (:mod:`kubevisor.agent.vms.reporting`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from kubevisor.agent import diskfiles, disks, domainxml, reconciling, segmenting, segments
from kubevisor.agent.kube import objects
from kubevisor.agent.libvirt import (
    DomainInfo,
    Hypervisor,
    HypervisorError,
    HypervisorUnavailable,
    migrating,
)
from kubevisor.agent.runtime.informing import Key
from kubevisor.agent.storagebackends import diskstore
from kubevisor.agent.vms import cloning, placing, reporting, statuses
from kubevisor.api import conditions, groups, machines, migrations, naming

if TYPE_CHECKING:
    from kubevisor.agent.vms.realizing import AgentConfig

logger = logging.getLogger(__name__)


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
    applied_restore: str | None = None
    ready_reason: str | None = None
    message: str = ""
    network_states: list[segments.SegmentState] = dataclasses.field(default_factory=list)


def scope_of(key: Key, obj: dict[str, Any], domain: DomainInfo | None) -> Scope:
    """The scope of a pass over ``obj`` (pure; an invalid status.machine is logged and
    read as none)."""
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
        applied_restore=st.get("appliedRestore"),
    )


def leaving_here(status: Mapping[str, Any], node: str) -> bool:
    """Whether ``status.migration`` says the VM is leaving ``node`` by migration (pure;
    the rule is :func:`migrations.leaving`, an unreadable record counts as not leaving)."""
    raw = status.get("migration")
    if raw is None:
        return False
    try:
        state = migrations.VMMigrationState.model_validate(raw)
    except ValidationError as exc:
        logger.warning("status.migration unreadable: %s", exc)
        return False
    return migrations.leaving(state, node)


def console_log_path(console_dir: Path, domain_name: str) -> Path:
    """The serial console log of a domain (the VM's own file: removed with the VM)."""
    return console_dir / f"{domain_name}.log"


def _without_backends(machine: machines.MachineSpec) -> machines.MachineSpec:
    """The machine with every backend disk dropped: what can still be cleaned up when a
    disk's StorageBackend is gone (its images stay on the server, never guessed at)."""
    return machine.model_copy(update={"disks": [d for d in machine.disks if d.backend is None]})


def refusal_reason(message: str) -> conditions.Reason:
    """The reason for a hypervisor's refusal, from libvirt's own words (pure)."""
    if "firmware" in message.lower():
        return conditions.Reason.FIRMWARE_UNAVAILABLE
    if "nfs" in message.lower() or "iscsi" in message.lower():
        # QEMU's own storage client could not open a disk on a backend (libnfs/libiscsi
        # say so in their words, which the message keeps).
        return conditions.Reason.STORAGE_FAILED
    return conditions.Reason.HYPERVISOR_REFUSED


class VMHandler:
    """Runs the pass of one VM key (see module docstring). ``cache``: the placed VMs as
    watched; ``enqueue_later``: ask for another pass; ``sync_segments``: declare the VMs'
    segments (prunes the unneeded)."""

    def __init__(
        self,
        hypervisor: Hypervisor,
        config: AgentConfig,
        *,
        cache: Callable[[], Mapping[Key, dict[str, Any]]],
        vms: objects.CustomObjects,
        secrets: objects.Secrets,
        clones: cloning.Clones,
        reporter: reporting.Reporter,
        node_segments: segmenting.NodeSegments,
        enqueue_later: Callable[[Key, float], None],
        sync_segments: Callable[[], Awaitable[None]],
        forget: Callable[[Key], None],
        failed: Callable[[Key], float] | None = None,
        succeeded: Callable[[Key], None] = lambda _key: None,
        record: Callable[[dict[str, Any], str, str], Awaitable[None]] | None = None,
        store: diskstore.DiskStore | None = None,
    ) -> None:
        self.hv = hypervisor
        self.config = config
        self.store = store or diskstore.DiskStore(config.layout)
        """Where the VM's disks are made and deleted (node files, NFS backends)."""
        self.cache = cache
        self.vms = vms
        self.secrets = secrets
        self.clones = clones
        self.reporter = reporter
        self.node_segments = node_segments
        self.enqueue_later = enqueue_later
        self.sync_segments = sync_segments
        self.forget = forget
        self.failed = failed or self._retry_in_10s
        """Retry ``key`` after its backoff (the work loop's, 10 s doubling to 5 min)."""
        self.succeeded = succeeded
        self.record = record
        """Post a Warning Event on the VM (reason, message)."""
        self._shutdown_at: dict[Key, float] = {}
        self._seen: set[Key] = set()
        self.passes = 0

    def _retry_in_10s(self, key: Key) -> float:
        self.enqueue_later(key, 10.0)
        return 10.0

    async def reconcile(self, key: Key) -> None:
        """Read, decide, act, report for one VM. Without libvirt (the connection is lost,
        the adapter reconnects) the VM is reported ``Unknown`` with reason
        HypervisorUnavailable and looked at again when the connection is back."""
        try:
            await self._reconcile(key)
        except HypervisorUnavailable as exc:
            obj = self.cache().get(key)
            if obj is None or (obj.get("metadata") or {}).get("deletionTimestamp"):
                return
            logger.warning("%s/%s: %s", *key, exc)
            scope = scope_of(key, obj, None)
            scope.ready_reason = conditions.Reason.HYPERVISOR_UNAVAILABLE
            scope.message = (
                f"node {self.config.node} cannot reach its hypervisor: {exc}; the domain's"
                " state is unknown until the connection is back"
            )
            await self.reporter.report_unavailable(scope)

    async def _reconcile(self, key: Key) -> None:
        self.passes += 1
        obj = self.cache().get(key)
        if obj is None:
            self._shutdown_at.pop(key, None)
            self._seen.discard(key)
            return
        if key in self.clones.holding:
            return  # suspended for a clone's copy; enqueued again when the copy is done
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if labels.get(groups.LABEL_NODE) != self.config.node:
            return  # re-check: the server-side selector is the filter, this the guard
        identity_name = naming.domain_name(*key)
        domain = await self.hv.lookup(identity_name)
        scope = scope_of(key, obj, domain)
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
        if scope.domain is None and not deleting and leaving_here(scope.status, self.config.node):
            # Two-copies guard: the VM left (or is leaving) this node by migration; its
            # domain is missing because it runs on the target. No ENSURE/START, no phase
            # write; look again until the controller moves the VM or the migration fails.
            logger.info("%s/%s: leaving by migration; domain not started here", *key)
            self.enqueue_later(key, 5.0)
            return
        if scope.domain is not None and migrating.paused_by_migration(scope.domain):
            # libvirt paused it for the last copy round (or post-copy): resuming, pausing
            # or stopping it now would fight the migration job (a resume waits for the
            # job lock, then fails on the departed domain). The Migration loop owns it.
            logger.info("%s/%s: paused by its migration; left to the migration", *key)
            self.enqueue_later(key, 1.0)
            return
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
        if key in self.clones.holding:
            return  # a clone's copy suspended it while we looked: nothing may resume it now
        first_pass = key not in self._seen
        self._seen.add(key)
        phase = plan.phase
        for action in plan.actions:
            ok = await self._act(action, scope, restart_token)
            if not ok:
                phase = statuses.Phase.STARTING
                wait = self.failed(key)
                logger.warning(
                    "%s/%s: %s: %s; retrying in %.0fs",
                    *key,
                    scope.ready_reason,
                    scope.message,
                    wait,
                )
                if self.record is not None and scope.ready_reason is not None:
                    await self.record(scope.obj, str(scope.ready_reason), scope.message)
                break
        if phase is statuses.Phase.RUNNING:
            self.succeeded(key)
        if plan.requeue:
            self.enqueue_later(key, 1.0)
        if deleting or phase is None:
            return
        wrote = await self.reporter.report(scope, phase)
        if first_pass and active and not plan.actions:
            logger.info(
                "%s/%s: adopted running domain %s; status %s",
                *key,
                identity_name,
                "updated" if wrote else "unchanged (no write)",
            )
        if not plan.actions and phase in statuses.UP:
            return
        await self.sync_segments()

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
            try:
                await self.hv.start(name)
            except HypervisorError as exc:
                scope.ready_reason, scope.message = refusal_reason(str(exc)), str(exc)
                return False
            scope.started_at = reporting.now_text()
            if self.record is not None:  # Normal: the type is api/eventreasons'
                started = f"started {name} on node {self.config.node}."
                await self.record(scope.obj, conditions.Reason.STARTING, started)
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
        await self.vms.add_finalizer(scope.obj, groups.AGENT_FINALIZER)
        try:
            plans = await self.store.plan(scope.machine, scope.identity)
            if disks.clone_sources(plans):
                await self.clones.copy(scope.key, plans)
            await self._restore_in_place(scope, plans)
            for disk in plans:
                await self.store.ensure(disk)
        except disks.DiskError as exc:
            scope.ready_reason, scope.message = exc.reason, str(exc)
            return False
        if not await self._ensure_segments(scope):
            return False
        try:
            password = await self._vnc_password(scope)
        except objects.SecretNotFound as exc:
            scope.ready_reason, scope.message = conditions.Reason.SECRET_NOT_FOUND, str(exc)
            return False
        self.config.console_dir.mkdir(parents=True, exist_ok=True)
        placement = domainxml.Placement(
            disks=disks.placements(plans),
            nics=placing.nic_placements(
                scope.machine,
                scope.identity,
                self.config.networks,
                managed=self.config.managed_networks,
            ),
            console_log=console_log_path(self.config.console_dir, scope.identity.domain_name)
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
                scope.ready_reason, scope.message = refusal_reason(str(exc)), str(exc)
                return False
        return True

    async def _restore_in_place(self, scope: Scope, plans: list[disks.DiskPlan]) -> None:
        """``status.restore`` (the controller judged the VM stopped): replace the disks
        from the backup's copies, before the domain is (re)defined and started — never
        under a running domain. Done once per backup (``appliedRestore``)."""
        raw = scope.status.get("restore") or {}
        backup = raw.get("backup")
        if backup is None or backup == scope.applied_restore:
            return
        if scope.domain is not None and reconciling.DomainView(scope.domain.state).active:
            return
        copies = {d.get("name"): d.get("path") for d in raw.get("disks") or []}
        for disk in plans:
            source = copies.get(disk.name)
            if source is not None and (disk.nfs is not None or disk.iscsi is not None):
                raise disks.DiskError(
                    conditions.Reason.INVALID_SPEC,
                    f"disk {disk.name!r} is on a StorageBackend: restoring in place writes "
                    "node files only; restore into a new VM instead",
                )
            if source is not None:
                logger.info("%s/%s: restoring disk %s from %s", *scope.key, disk.name, source)
                await diskfiles.replace_from(disk.path, Path(source))
        scope.applied_restore = str(backup)

    async def _ensure_segments(self, scope: Scope) -> bool:
        """Set up the segment of every NIC; False (reason and message set) when one is
        not offered by the node or cannot be set up."""
        assert scope.machine is not None
        try:
            wanted = placing.nic_segments(
                scope.machine, self.config.networks, managed=self.config.managed_networks
            )
        except KeyError as exc:
            scope.ready_reason = conditions.Reason.NETWORK_UNAVAILABLE
            scope.message = f"network {exc.args[0]!r} is not offered by node {self.config.node}"
            return False
        for segment in wanted:
            try:
                state = await self.node_segments.ensure(segment)
            except segments.SegmentError as exc:
                scope.ready_reason = conditions.Reason.NETWORK_UNAVAILABLE
                scope.message = str(exc)
                return False
            scope.network_states.append(state)
        return True

    async def _vnc_password(self, scope: Scope) -> str | None:
        assert scope.machine is not None
        ref = scope.machine.display.password_secret_ref
        if ref is None or not scope.machine.display.vnc:
            return None
        password = await self.secrets.read(scope.identity.namespace, ref.name, ref.key)
        if password is None:
            raise objects.SecretNotFound(
                f"Secret {scope.identity.namespace}/{ref.name} has no key {ref.key!r}"
            )
        return password

    async def _cleanup(self, scope: Scope) -> None:
        """Delete the VM's own disks (never bases, never retained), prune segments, and
        release the VM by removing our finalizer."""
        if scope.machine is not None:
            try:
                plans = await self.store.plan(scope.machine, scope.identity)
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
                try:
                    plans = await self.store.plan(bare, scope.identity)
                except disks.DiskError as exc:
                    # A backend gone too: its images cannot be found now; node files can.
                    logger.warning("%s/%s: disks not all removed: %s", *scope.key, exc)
                    plans = disks.plan(_without_backends(bare), scope.identity,
                                       self.config.layout)  # fmt: skip
            try:
                removed = await self.store.remove(plans)
            except disks.DiskError as exc:
                logger.warning("%s/%s: disks not all removed: %s", *scope.key, exc)
                removed = []
            logger.info("%s/%s: removed disks %s", *scope.key, removed)
        console_log = console_log_path(self.config.console_dir, scope.identity.domain_name)
        try:
            await asyncio.to_thread(console_log.unlink, True)
        except OSError as exc:
            logger.warning("%s/%s: console log %s not removed: %s", *scope.key, console_log, exc)
        self.forget(scope.key)
        await self.sync_segments()
        await self.vms.remove_finalizer(scope.obj, groups.AGENT_FINALIZER)
