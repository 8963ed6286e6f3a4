"""VMBackup handlers: every watch event (and a resync while waiting) asks for a pass.

A pass re-reads the VMBackup, its VM, every VMBackup and Migration (for the turn rule
and the chains), decides with ``deciding.decide`` and writes in this order: labels and
finalizer add (one JSON patch guarded by the resourceVersion read), the controller's
status fields (server-side apply as ``vmbackups.CONTROLLER_FIELD_MANAGER``, the full set
of ``vmbackups.CONTROLLER_FIELDS``), Events, then the finalizer removal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pydantic

from kubevisor.api import conditions, groups, kinds, nodes, virtualmachines, vmbackups
from kubevisor.controller.kube import operating
from kubevisor.controller.runtime import running
from kubevisor.controller.runtime.reconciling import Key, Outcome
from kubevisor.controller.vmbackups import deciding

log = logging.getLogger(__name__)

BACKUP = kinds.VMBACKUP
VM = kinds.VIRTUALMACHINE
MIGRATION = kinds.MIGRATION
RESYNC_SECONDS = 5.0
MANAGER = vmbackups.CONTROLLER_FIELD_MANAGER


def _parse(obj: Mapping[str, Any]) -> vmbackups.VMBackup | None:
    try:
        return vmbackups.VMBackup.model_validate(obj)
    except pydantic.ValidationError:
        return None


def status_of(obj: Mapping[str, Any], d: deciding.Decision, *, now: datetime) -> dict[str, Any]:
    """The controller's VMBackup status fields (the full set it owns; pure)."""
    current = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    listed = conditions.set_condition(
        list(current.get("conditions") or []),
        type=deciding.READY,
        status=d.ready.status,
        reason=d.ready.reason,
        message=d.ready.message,
        generation=generation,
        now=now,
    )
    out: dict[str, Any] = {
        "phase": d.phase.value,
        "conditions": [c for c in listed if c.get("type") == deciding.READY],
    }
    if d.node_name is not None:
        out["nodeName"] = d.node_name
    if d.mode is not None:
        out["mode"] = d.mode.value
    if d.chain is not None:
        out["chain"] = d.chain.model_dump(mode="json", by_alias=True, exclude_none=True)
    if d.machine is not None:
        out["machine"] = d.machine.model_dump(mode="json", by_alias=True, exclude_none=True)
    return out


def _same(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return all(current.get(k) == wanted.get(k) for k in vmbackups.CONTROLLER_FIELDS)


class VMBackups:
    """The VMBackup reconciler of one controller process."""

    def __init__(self, rt: running.Runtime) -> None:
        self._rt = rt
        self._reconciler = rt.reconciler(
            BACKUP.kind, self.reconcile_once, resync_seconds=RESYNC_SECONDS
        )
        self._admitting = asyncio.Lock()
        """One admission at a time: two Pending backups of a VM deciding at once could
        otherwise both see the other still Pending and both start."""

    def handlers(self) -> list[operating.Handler]:
        return [operating.OnEvent(BACKUP.plural, self.on_event)]

    async def on_event(
        self, type: str | None, namespace: str, name: str, body: dict[str, Any]
    ) -> None:
        key = (namespace, name)
        if type == "DELETED":
            self._reconciler.forget(key)
            # a deleted backup may have been what another one's deletion waited for
            for other in await self._rt.client.list_all(BACKUP.plural):
                meta = other.get("metadata") or {}
                if meta.get("namespace") == namespace and meta.get("deletionTimestamp"):
                    await self._reconciler.reconcile((namespace, str(meta.get("name"))))
            return
        await self._reconciler.reconcile(key)

    async def reconcile_once(self, key: Key) -> Outcome:
        outcome = Outcome.DONE
        for _ in range(3):
            outcome, moved = await self._pass(key)
            if not moved:
                break
        return outcome

    async def _pass(self, key: Key) -> tuple[Outcome, bool]:
        peek = await self._rt.client.get(BACKUP.plural, *key)
        if peek is None:
            return Outcome.GONE, False
        if ((peek.get("status") or {}).get("phase") or "Pending") == "Pending":
            async with self._admitting:
                return await self._decide_and_write(key)
        return await self._decide_and_write(key)

    async def _decide_and_write(self, key: Key) -> tuple[Outcome, bool]:
        namespace, name = key
        client = self._rt.client
        obj = await client.get(BACKUP.plural, namespace, name)
        if obj is None:
            return Outcome.GONE, False
        backup = _parse(obj)
        if backup is None:
            log.warning("VMBackup %s/%s unreadable", namespace, name)
            return Outcome.WAIT, False
        meta = obj.get("metadata") or {}
        vm_name = backup.spec.vm_name
        vm_obj = await client.get(VM.plural, namespace, vm_name)
        vm: virtualmachines.VirtualMachine | None = None
        if vm_obj is not None:
            try:
                vm = virtualmachines.VirtualMachine.model_validate(vm_obj)
            except pydantic.ValidationError:
                vm = None
        same_ns = [
            b
            for b in await client.list_all(BACKUP.plural)
            if (b.get("metadata") or {}).get("namespace") == namespace
        ]
        migs = [
            m
            for m in await client.list_all(MIGRATION.plural)
            if (m.get("metadata") or {}).get("namespace") == namespace
        ]
        contenders = [
            t
            for t in (
                *(vmbackups.backup_turn(b, vm_name) for b in same_ns),
                *(vmbackups.migration_turn(m, vm_name) for m in migs),
            )
            if t is not None
        ]
        others = []
        for b in same_ns:
            parsed = _parse(b)
            bmeta = b.get("metadata") or {}
            if parsed is None or bmeta.get("name") == name:
                continue
            others.append(
                deciding.Other(
                    name=str(bmeta.get("name")),
                    backup=parsed,
                    deleting=bool(bmeta.get("deletionTimestamp")),
                    completed=parsed.status.completed_at if parsed.status else None,
                )
            )
        phase = (backup.status.phase if backup.status else None) or vmbackups.VMBackupPhase.PENDING
        turn = vmbackups.Turn(
            BACKUP.kind,
            name,
            nodes.parse_time(meta.get("creationTimestamp")) or datetime.fromtimestamp(0, UTC),
            phase is vmbackups.VMBackupPhase.RUNNING,
        )
        d = deciding.decide(
            deciding.Inputs(
                backup=backup,
                name=name,
                finalizers=list(meta.get("finalizers") or []),
                deleting=bool(meta.get("deletionTimestamp")),
                vm=vm,
                turn=turn,
                contenders=contenders,
                others=others,
            )
        )
        await self._write(obj, d)
        moved = d.phase is not phase
        if d.finalizer == "remove":
            return Outcome.GONE, False
        return (Outcome.WAIT if d.wait else Outcome.DONE), moved

    async def _write(self, obj: dict[str, Any], d: deciding.Decision) -> None:
        client = self._rt.client
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        labels = dict(meta.get("labels") or {})
        new_labels = {k: v for k, v in d.labels.items() if labels.get(k) != v}
        if new_labels or d.finalizer == "add":
            ops: list[dict[str, Any]] = [
                {
                    "op": "test",
                    "path": "/metadata/resourceVersion",
                    "value": meta["resourceVersion"],
                }
            ]
            if new_labels:
                ops.append(
                    {"op": "add", "path": "/metadata/labels", "value": {**labels, **new_labels}}
                )
            if d.finalizer == "add":
                finalizers = [*(meta.get("finalizers") or []), groups.FINALIZER]
                ops.append({"op": "add", "path": "/metadata/finalizers", "value": finalizers})
            obj = await client.json_patch(BACKUP.plural, ns, name, ops, field_manager=MANAGER)
        wanted = status_of(obj, d, now=datetime.now(UTC))
        if not _same(obj.get("status") or {}, wanted):
            obj = await client.apply_status(
                BACKUP.plural,
                BACKUP.kind,
                ns,
                name,
                wanted,
                field_manager=MANAGER,
                resource_version=obj["metadata"]["resourceVersion"],
            )
        for type_, reason, message in d.events:
            self._rt.events.post(obj, kind=BACKUP.kind, type_=type_, reason=reason, message=message)
        if d.finalizer == "remove":
            fmeta = obj["metadata"]
            remaining = [f for f in fmeta.get("finalizers") or [] if f != groups.FINALIZER]
            await client.json_patch(
                BACKUP.plural,
                ns,
                name,
                [
                    {
                        "op": "test",
                        "path": "/metadata/resourceVersion",
                        "value": fmeta["resourceVersion"],
                    },
                    {"op": "replace", "path": "/metadata/finalizers", "value": remaining},
                ],
                field_manager=MANAGER,
            )
