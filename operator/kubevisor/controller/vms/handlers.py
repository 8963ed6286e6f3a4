"""VirtualMachine handlers: resolve, decide power state, place, write status once.

kopf delivers watch events; every event (and every change of a template a VM uses)
leads to a pass over that VM (``VMs.reconcile_once``), which re-reads the VM, runs the
phases in ``phases`` and applies the controller's status fields with server-side
apply. It is level-based: nothing is remembered between calls except which VMs to look
at again.

VMs that cannot progress by themselves (not placed, template or clone source missing)
are re-checked every ``RESYNC_SECONDS`` (the runtime's resync): new node Leases and
capacity freed by other VMs are noticed that way, templates immediately through their
own watch.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from kubevisor.api import groups, kinds
from kubevisor.api.conditions import ConditionType, Reason
from kubevisor.controller.kube import operating
from kubevisor.controller.placement import ledger, reserving
from kubevisor.controller.runtime import running
from kubevisor.controller.runtime.reconciling import Key, Outcome
from kubevisor.controller.vms import macs, moving, phases, status
from kubevisor.controller.vms.phases import Scope

log = logging.getLogger(__name__)

#: The kind served here (names from the one registry of kinds).
VM = kinds.VIRTUALMACHINE
RESYNC_SECONDS = 5.0
#: Reasons of a False condition that are not a problem worth a Warning.
QUIET_REASONS = frozenset(
    {Reason.AS_EXPECTED, Reason.STOPPED, Reason.SCHEDULED, Reason.RESTORE_PENDING}
)


class VMs:
    """The VirtualMachine reconciler of one controller process."""

    def __init__(self, rt: running.Runtime, *, placer: reserving.Placer) -> None:
        self._rt = rt
        self._placer = placer
        self._reconciler = rt.reconciler(
            VM.kind, self.reconcile_once, resync_seconds=RESYNC_SECONDS
        )
        self._by_template: dict[Key, set[str]] = {}
        """(namespace, template) -> names of the VMs that use it."""
        self._macs: dict[Key, macs.Seen] = {}
        """Every VM's recorded MACs per segment, from the watch (cross-VM MAC rule)."""
        self._templates: dict[Key, dict[str, Any]] = {}
        """(namespace, name) -> the VMTemplate as its watch last delivered it: a pass
        resolves from it instead of reading the template again (``phases.resolve``)."""
        self._wrote: dict[Key, int] = {}
        """The resourceVersion of each VM's object as our last pass left it: a watch
        body older than that is the event of a write the pass already built on."""

    def handlers(self) -> list[operating.Handler]:
        return [operating.OnEvent(VM.plural, self.on_event)]

    @property
    def waiting(self) -> set[Key]:
        """The VMs the resync looks at again."""
        return self._reconciler.waiting

    def _post(self, obj: dict[str, Any], *, type_: str, reason: str, message: str) -> None:
        self._rt.events.post(obj, kind=VM.kind, type_=type_, reason=reason, message=message)

    async def _write(self, scope: Scope) -> None:
        """Apply our status fields if they differ from what the VM shows; post Events for
        conditions that changed into a problem."""
        assert scope.power is not None
        old = scope.status
        wanted = status.build(
            old,
            generation=scope.generation,
            now=scope.now,
            node=scope.node,
            machine=scope.machine,
            desired=scope.power.desired,
            restart_token=scope.power.restart_token,
            phase=scope.phase if scope.node is None else None,
            conds=scope.conds,
            restore=scope.restore,
        )
        if not status.same(old, wanted):
            # guarded by the version read: a stale read (say, from before a migration
            # moved the VM) is refused with 409 and the pass runs again on fresh data
            result = await self._rt.client.apply_status(
                VM.plural,
                VM.kind,
                scope.namespace,
                scope.name,
                wanted,
                resource_version=scope.meta.get("resourceVersion"),
            )
            scope.obj = result
        for type_, cond in scope.conds.items():
            before = status.condition(old, type_) or {}
            if (before.get("reason"), before.get("message")) == (cond.reason, cond.message):
                continue
            if cond.status == "False" and cond.reason not in QUIET_REASONS:
                self._post(scope.obj, type_="Warning", reason=cond.reason, message=cond.message)
            elif type_ == ConditionType.RESTART_REQUIRED and cond.status == "True":
                self._post(
                    scope.obj, type_="Normal", reason="RestartRequired", message=cond.message
                )
        for reason, message in scope.events:
            self._post(scope.obj, type_="Normal", reason=reason, message=message)

    async def _ensure_metadata(self, scope: Scope) -> None:
        """Label ``kubevisor.io/node``, our finalizer and the agent's on a placed VM, in
        one patch: the agent sees the VM only through the label, so its finalizer is
        there from its first look and it needs no write of its own before it reports
        (create, placement status, this patch, the agent's Running status: 4 writes)."""
        if scope.node is None:
            return
        meta = scope.meta
        labels = dict(meta.get("labels") or {})
        finalizers = list(meta.get("finalizers") or [])
        missing = [f for f in (groups.FINALIZER, groups.AGENT_FINALIZER) if f not in finalizers]
        if labels.get(groups.LABEL_NODE) == scope.node and not missing:
            return
        ops: list[dict[str, Any]] = [
            {
                "op": "add",
                "path": "/metadata/labels",
                "value": {**labels, groups.LABEL_NODE: scope.node},
            },
        ]
        if missing:
            ops.append(
                {"op": "add", "path": "/metadata/finalizers", "value": [*finalizers, *missing]}
            )
        scope.obj = await self._rt.client.guarded_patch(VM.plural, scope.obj, ops)

    async def _move(self, obj: dict[str, Any], target: str) -> dict[str, Any]:
        """A Succeeded migration or a node-loss recovery: the ``kubevisor.io/node`` label
        goes to ``target`` first (guarded by the version read); ``nodeName`` follows in
        this pass's status write (``phases.schedule`` takes the target from
        ``moving.relocated_to``)."""
        meta = obj["metadata"]
        labels = dict(meta.get("labels") or {})
        if labels.get(groups.LABEL_NODE) == target:
            return obj
        source = (obj.get("status") or {}).get("nodeName")
        how = (
            f"live-migrated from node {source}"
            if moving.moved_to(obj.get("status") or {}) == target
            else f"restarted from its shared disks: node {source} was lost and fenced"
        )
        moved = await self._rt.client.guarded_patch(
            VM.plural,
            obj,
            [
                {
                    "op": "add",
                    "path": "/metadata/labels",
                    # the target label's job is done: the VM lives there now
                    "value": {
                        **{k: v for k, v in labels.items() if k != groups.LABEL_MIGRATION_TARGET},
                        groups.LABEL_NODE: target,
                    },
                },
            ],
        )
        self._post(
            moved,
            type_="Normal",
            reason="Migrated",
            message=f"now runs on node {target} ({how}).",
        )
        log.info("VM %s/%s moved to node %s (%s)", meta["namespace"], meta["name"], target, how)
        return moved

    async def _finalize(self, obj: dict[str, Any]) -> None:
        """Release our finalizer once the agent's is gone (it removes domain, taps, disks),
        and the agent's with it when no agent ever reported on the VM."""
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if groups.FINALIZER not in finalizers:
            return
        if phases.AGENT_FINALIZER in finalizers and phases.agent_reported(obj.get("status") or {}):
            return
        # the agent's finalizer is ours to drop while no agent has reported on the VM:
        # we put it there with the node label, and no agent may ever look (a node that
        # never came up); one that is realizing it now leaves an orphan domain its sweep
        # removes, disks kept (docs/architecture.md, Delete)
        remaining = [f for f in finalizers if f not in (groups.FINALIZER, phases.AGENT_FINALIZER)]
        await self._rt.client.guarded_patch(
            VM.plural,
            obj,
            [{"op": "replace", "path": "/metadata/finalizers", "value": remaining}],
        )
        log.info("released finalizer of %s/%s", meta["namespace"], meta["name"])

    def _track(self, key: Key, scope: Scope | None) -> Outcome:
        """Remember which template each VM uses; whether it needs a periodic look."""
        for tkey, names in list(self._by_template.items()):
            if tkey[0] == key[0]:
                names.discard(key[1])
                if not names:
                    del self._by_template[tkey]
        if scope is None:
            return Outcome.GONE
        if scope.spec is not None and scope.spec.template_ref is not None:
            tkey = (key[0], scope.spec.template_ref.name)
            self._by_template.setdefault(tkey, set()).add(key[1])
        for type_ in (ConditionType.TEMPLATE_RESOLVED, ConditionType.SSH_KEYS_READY):
            cond = scope.conds.get(type_)
            if cond is not None and cond.status != "True":
                return Outcome.WAIT
        if scope.node is None:
            return Outcome.WAIT
        return Outcome.DONE

    async def reconcile_once(self, key: Key) -> Outcome:
        """One pass over one VM: read (or take the body the watch just delivered: safe
        because every write below is guarded by its resourceVersion, see
        ``runtime.reconciling``), decide, write."""
        namespace, name = key
        client = self._rt.client
        delivered = self._fresh(key)
        obj = delivered if delivered is not None else await client.get(VM.plural, namespace, name)
        if obj is None:
            return self._track(key, None)
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            self._track(key, None)
            await self._finalize(obj)
            return Outcome.GONE
        target = moving.relocated_to(obj.get("status") or {})
        if target is not None:
            obj = await self._move(obj, target)
        if obj is not delivered:
            self._placer.observe(obj)  # a delivered body: ``on_event`` observed it
        scope = Scope(obj=obj, now=datetime.now(UTC))
        await phases.resolve(scope, client, templates=self._templates)
        phases.power(scope)
        phases.record_machine(scope)
        await phases.restore_in_place(scope, client)
        if not scope.status.get("nodeName"):
            me = macs.seen(obj)
            me = macs.Seen(me.key, me.created, macs.ports(scope.machine))
            scope.mac_conflict = macs.conflict(me, self._macs.values())
        await phases.schedule(scope, client, self._write, placer=self._placer)
        await self._ensure_metadata(scope)
        version = ledger.resource_version((scope.obj.get("metadata") or {}).get("resourceVersion"))
        if version is not None:
            self._wrote[key] = version
        return self._track(key, scope)

    def _fresh(self, key: Key) -> dict[str, Any] | None:
        """The watch body offered for ``key`` unless our last pass already left the VM
        at a newer version (its write's own event, delivered late): then None, read it."""
        body = self._reconciler.delivered(key)
        if body is None:
            return None
        version = ledger.resource_version((body.get("metadata") or {}).get("resourceVersion"))
        if version is None or version < self._wrote.get(key, 0):
            return None
        return body

    async def on_event(
        self, type: str | None, namespace: str, name: str, body: dict[str, Any]
    ) -> None:
        """Every VM event: update the placement ledger, reconcile that VM (deletions
        only forget it)."""
        key = (namespace, name)
        if type == "DELETED":
            gone = self._macs.pop(key, None)
            if gone is not None and gone.ports:
                # a VM kept off a node by this one's MAC may be placed now
                for other in list(self._macs.values()):
                    if other.ports & gone.ports:
                        self._reconciler.spawn(other.key)
            self._placer.forget(str((body.get("metadata") or {}).get("uid")))
            self._track(key, None)
            self._reconciler.forget(key)
            self._wrote.pop(key, None)
            return
        self._placer.observe(body)
        self._macs[key] = macs.seen(body)
        self._reconciler.offer(key, body)
        await self._reconciler.reconcile(key)

    def template_changed(
        self, namespace: str, template: str, body: dict[str, Any] | None = None
    ) -> None:
        """A template appeared, changed (``body``, from its watch) or went away (None):
        keep it for the passes to resolve from, and look at the VMs using it now."""
        if body is None:
            self._templates.pop((namespace, template), None)
        else:
            self._templates[(namespace, template)] = body
        for name in sorted(self._by_template.get((namespace, template), set())):
            self._reconciler.spawn((namespace, name))
