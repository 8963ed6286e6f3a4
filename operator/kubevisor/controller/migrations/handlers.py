"""Migration handlers: admit, choose the target, follow the agents' reports, clean up.

Every Migration watch event asks for a pass over that Migration
(``Migrations.reconcile_once``): it re-reads the Migration, its VM, the node Leases,
every Migration (for the limits) and every VM (for the used capacity), decides with
``progressing.decide`` and writes in this order: the Migration's labels and finalizer,
the VM's ``kubevisor.io/migration-target`` label, the VM's ``status.migration``, the
Migration's status (field manager ``migrations.CONTROLLER_FIELD_MANAGER``, the full set
of ``migrations.CONTROLLER_FIELDS``), then Events. A pass that moved the phase runs
again at once (Scheduling → PreparingTarget in one go). Migrations that wait (limits,
refusals, reports, Leases, timeouts, cleanup) are looked at every ``RESYNC_SECONDS``.

Configuration (environment of the controller process): the limits
(``limits.ENV_PER_CLUSTER``, ``limits.ENV_OUTBOUND_PER_NODE``) and
:data:`ENV_REQUIRE_RTT` (``false`` lets a target without an RTT measurement pass).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import pydantic

from kubevisor.api import conditions, groups, kinds, migrations, nodes, virtualmachines, vmbackups
from kubevisor.controller.kube import operating
from kubevisor.controller.migrations import limits, progressing
from kubevisor.controller.placement import ledger, placing, reserving
from kubevisor.controller.runtime import running
from kubevisor.controller.runtime.reconciling import Key, Outcome

log = logging.getLogger(__name__)

MIGRATION = kinds.MIGRATION
VM = kinds.VIRTUALMACHINE
RESYNC_SECONDS = 5.0
MANAGER = migrations.CONTROLLER_FIELD_MANAGER
#: Set to ``false`` to let targets without a measured RTT pass (agents that do not probe).
ENV_REQUIRE_RTT: Final = "KUBEVISOR_MIGRATION_REQUIRE_RTT"
#: Scheduled=False reasons that are an ordinary wait (Normal Events, not Warnings).
QUIET_REASONS = frozenset(
    {
        migrations.MigrationReason.CLUSTER_LIMIT,
        migrations.MigrationReason.NODE_OUTBOUND_LIMIT,
        migrations.MigrationReason.VM_ALREADY_MIGRATING,
        migrations.MigrationReason.BACKUP_IN_PROGRESS,
    }
)


def require_rtt(environ: Mapping[str, str]) -> bool:
    """:data:`ENV_REQUIRE_RTT` read as a boolean (default true)."""
    return environ.get(ENV_REQUIRE_RTT, "true").strip().lower() not in ("false", "0", "no")


def _entry(obj: Mapping[str, Any], vms: Mapping[str, Mapping[str, Any]]) -> limits.Entry:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    ns = str(meta.get("namespace"))
    vm_key = f"{ns}/{(obj.get('spec') or {}).get('vmName')}"
    source = status.get("sourceNode") or (vms.get(vm_key, {}).get("status") or {}).get("nodeName")
    try:
        phase = migrations.MigrationPhase(status.get("phase") or "Pending")
    except ValueError:
        phase = migrations.MigrationPhase.PENDING
    created = conditions_time(meta.get("creationTimestamp"))
    scheduled = conditions.get_condition(list(status.get("conditions") or []), "Scheduled")
    reason = (scheduled or {}).get("reason")
    return limits.Entry(
        key=f"{ns}/{meta.get('name')}",
        vm=vm_key,
        source_node=str(source or ""),
        phase=phase,
        created=created,
        refused=phase is migrations.MigrationPhase.PENDING
        and (scheduled or {}).get("status") == "False"
        and reason is not None
        and reason not in limits.LIMIT_REASONS,
    )


def conditions_time(value: Any) -> datetime:
    """A creationTimestamp as a datetime (epoch when missing: sorts first)."""
    return nodes.parse_time(value) or datetime.fromtimestamp(0, UTC)


def _status(obj: Mapping[str, Any], d: progressing.Decision, *, now: datetime) -> dict[str, Any]:
    """The controller's Migration status fields (the full set it owns)."""
    current = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    listed: list[dict[str, Any]] = list(current.get("conditions") or [])
    for type_, cond in d.conds.items():
        listed = conditions.set_condition(
            listed,
            type=type_,
            status=cond.status,
            reason=cond.reason,
            message=cond.message,
            generation=generation,
            now=now,
        )
    owned = {progressing.SCHEDULED, progressing.PROGRESSING, progressing.COMPLETED}
    owned.add(progressing.READY)
    out: dict[str, Any] = {
        "phase": d.phase.value,
        "phaseTransitions": [
            {"phase": t.phase.value, "time": conditions.format_time(t.time)} for t in d.transitions
        ],
        "conditions": [c for c in listed if c.get("type") in owned],
    }
    if d.source_node is not None:
        out["sourceNode"] = d.source_node
    if d.target_node is not None:
        out["targetNode"] = d.target_node
    if d.completed_at is not None:
        out["completedAt"] = conditions.format_time(d.completed_at)
    return out


def _same(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return all(current.get(k) == wanted.get(k) for k in migrations.CONTROLLER_FIELDS)


class Migrations:
    """The Migration reconciler of one controller process."""

    def __init__(self, rt: running.Runtime, *, environ: Mapping[str, str] = os.environ) -> None:
        self._rt = rt
        self._limits = limits.Limits.from_env(environ)
        self._require_rtt = require_rtt(environ)
        self._reconciler = rt.reconciler(
            MIGRATION.kind, self.reconcile_once, resync_seconds=RESYNC_SECONDS
        )
        self._admitting = asyncio.Lock()
        """One admission at a time: the limits count what the API server holds, so two
        Pending passes deciding at once could both take the last slot."""

    def handlers(self) -> list[operating.Handler]:
        return [operating.OnEvent(MIGRATION.plural, self.on_event)]

    async def on_event(
        self, type: str | None, namespace: str, name: str, body: dict[str, Any]
    ) -> None:
        key = (namespace, name)
        if type == "DELETED":
            self._reconciler.forget(key)
            return
        await self._reconciler.reconcile(key)

    def _post(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self._rt.events.post(obj, kind=MIGRATION.kind, type_=type_, reason=reason, message=message)

    async def reconcile_once(self, key: Key) -> Outcome:
        """Passes over one Migration until its phase stops moving."""
        outcome = Outcome.DONE
        for _ in range(4):
            outcome, moved = await self._pass(key)
            if not moved:
                break
        return outcome

    async def _pass(self, key: Key) -> tuple[Outcome, bool]:
        """One pass; a Pending Migration's pass holds the admission lock throughout.

        The object is read once, before the lock: passes over one key never overlap, and
        if anything else wrote it meanwhile the guarded patch fails and the next pass
        decides again."""
        obj = await self._rt.client.get(MIGRATION.plural, *key)
        if obj is None:
            return Outcome.GONE, False
        phase = (obj.get("status") or {}).get("phase")
        if phase in (None, migrations.MigrationPhase.PENDING.value):
            async with self._admitting:
                return await self._decide_and_write(key, obj)
        return await self._decide_and_write(key, obj)

    async def _decide_and_write(self, key: Key, obj: dict[str, Any]) -> tuple[Outcome, bool]:
        namespace, name = key
        client = self._rt.client
        meta = obj.get("metadata") or {}
        try:
            mig = migrations.Migration.model_validate(obj)
        except pydantic.ValidationError as exc:
            log.warning("Migration %s/%s unreadable: %s", namespace, name, exc)
            return Outcome.WAIT, False
        now = datetime.now(UTC)
        vm_obj = await client.get(VM.plural, namespace, mig.spec.vm_name)
        vm: virtualmachines.VirtualMachine | None = None
        if vm_obj is not None:
            try:
                vm = virtualmachines.VirtualMachine.model_validate(vm_obj)
            except pydantic.ValidationError:
                vm = None
        leases = await client.list_leases(nodes.LEASE_NAMESPACE, nodes.AGENT_SELECTOR)
        phase = (mig.status.phase if mig.status else None) or migrations.MigrationPhase.PENDING
        wait: limits.Wait | None = None
        used: dict[str, Any] = {}
        cordoned: frozenset[str] = frozenset()
        if phase is migrations.MigrationPhase.PENDING and vm is not None:
            cordoned = placing.cordoned(await client.list_nodes())
            all_vms = await client.list_all(VM.plural)
            by_key = {
                f"{(v.get('metadata') or {}).get('namespace')}/"
                f"{(v.get('metadata') or {}).get('name')}": v
                for v in all_vms
            }
            entries = [_entry(m, by_key) for m in await client.list_all(MIGRATION.plural)]
            admission = limits.admit(entries, self._limits)
            wait = admission.waiting.get(f"{namespace}/{name}")
            if wait is None:
                wait = await self._backup_wait(obj, mig.spec.vm_name)
            uid = str(((vm_obj or {}).get("metadata") or {}).get("uid"))
            used = ledger.usage_by_node(all_vms, exclude=uid)
        d = progressing.decide(
            progressing.Inputs(
                migration=mig,
                labels=dict(meta.get("labels") or {}),
                finalizers=list(meta.get("finalizers") or []),
                deleting=bool(meta.get("deletionTimestamp")),
                vm=vm,
                vm_labels=dict(((vm_obj or {}).get("metadata") or {}).get("labels") or {}),
                leases=leases,
                used=used,
                wait=wait,
                now=now,
                require_rtt=self._require_rtt,
                cpu_overcommit=reserving.CPU_OVERCOMMIT,
                cordoned=cordoned,
            )
        )
        await self._write(obj, vm_obj, d, now=now)
        moved = d.phase is not phase
        if d.finalizer == "remove":
            return Outcome.GONE, False
        if d.wait or d.phase in migrations.ACTIVE_PHASES:
            return Outcome.WAIT, moved
        return Outcome.DONE, moved

    async def _backup_wait(self, obj: dict[str, Any], vm_name: str) -> limits.Wait | None:
        """A backup of the same VM runs or was asked for first: this migration waits
        (``vmbackups.waits_for``, the rule the VMBackup reconciler applies too)."""
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace")
        me = vmbackups.Turn(
            MIGRATION.kind,
            str(meta.get("name")),
            conditions_time(meta.get("creationTimestamp")),
            False,
        )
        turns = [
            vmbackups.backup_turn(b, vm_name)
            for b in await self._rt.client.list_all(kinds.VMBACKUP.plural)
            if (b.get("metadata") or {}).get("namespace") == ns
        ]
        first = vmbackups.waits_for(me, [t for t in turns if t is not None])
        if first is None:
            return None
        state = "runs" if first.active else "was asked for first"
        return limits.Wait(
            migrations.MigrationReason.BACKUP_IN_PROGRESS,
            f"VMBackup {first.name} of VM {vm_name} {state}; this migration waits for it.",
        )

    async def _write(
        self,
        obj: dict[str, Any],
        vm_obj: dict[str, Any] | None,
        d: progressing.Decision,
        *,
        now: datetime,
    ) -> None:
        client = self._rt.client
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if d.labels or d.finalizer == "add":
            ops: list[dict[str, Any]] = []
            if d.labels:
                labels = {**(meta.get("labels") or {}), **d.labels}
                ops.append({"op": "add", "path": "/metadata/labels", "value": labels})
            if d.finalizer == "add":
                finalizers = [*(meta.get("finalizers") or []), groups.FINALIZER]
                ops.append({"op": "add", "path": "/metadata/finalizers", "value": finalizers})
            obj = await client.guarded_patch(MIGRATION.plural, obj, ops, field_manager=MANAGER)
        if vm_obj is not None and d.vm_target_label is not None:
            vmeta = vm_obj["metadata"]
            labels = dict(vmeta.get("labels") or {})
            if d.vm_target_label == "set" and d.target_node is not None:
                labels[groups.LABEL_MIGRATION_TARGET] = d.target_node
            else:
                labels.pop(groups.LABEL_MIGRATION_TARGET, None)
            vm_obj = await client.guarded_patch(
                VM.plural,
                vm_obj,
                [{"op": "add", "path": "/metadata/labels", "value": labels}],
                field_manager=MANAGER,
            )
        if vm_obj is not None and d.vm_migration is not None:
            await client.apply_status(
                VM.plural,
                VM.kind,
                ns,
                vm_obj["metadata"]["name"],
                {"migration": d.vm_migration.model_dump(mode="json", by_alias=True)},
                field_manager=MANAGER,
            )
        wanted = _status(obj, d, now=now)
        current = obj.get("status") or {}
        if not _same(current, wanted):
            obj = await client.apply_status(
                MIGRATION.plural, MIGRATION.kind, ns, name, wanted, field_manager=MANAGER
            )
        for type_, reason, message in d.events:
            self._post(obj, type_, reason, message)
        sched = d.conds.get(progressing.SCHEDULED)
        before = conditions.get_condition(list(current.get("conditions") or []), "Scheduled")
        if (
            sched is not None
            and sched.status == "False"
            and (before or {}).get("message") != sched.message
        ):
            kind = "Normal" if sched.reason in QUIET_REASONS else "Warning"
            self._post(obj, kind, sched.reason, sched.message)
        if d.finalizer == "remove":
            # against the version decided on (or our own write of it): a source report
            # arriving meanwhile fails the test, and the next pass decides again
            finalizers = obj["metadata"].get("finalizers") or []
            remaining = [f for f in finalizers if f != groups.FINALIZER]
            await client.guarded_patch(
                MIGRATION.plural,
                obj,
                [{"op": "replace", "path": "/metadata/finalizers", "value": remaining}],
                field_manager=MANAGER,
            )
