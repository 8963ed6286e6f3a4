"""VMBackupSchedule handlers: every watch event, and a resync every
:data:`RESYNC_SECONDS` (a schedule always waits for its next instant), asks for a pass.

A pass reads the schedule, its VM and its VMBackups (label
``vmbackupschedules.LABEL_SCHEDULE``), decides with ``deciding.decide`` and writes:
the due VMBackup (create; AlreadyExists means an earlier pass made it), the pruned
VMBackups (delete: the VMBackup controller and the agent then remove their files, and
refuse a backup a kept incremental needs), the status (server-side apply as
``vmbackupschedules.CONTROLLER_FIELD_MANAGER``), then the Events.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pydantic

from kubevisor.api import conditions, kinds, nodes, virtualmachines, vmbackups, vmbackupschedules
from kubevisor.controller.kube import operating
from kubevisor.controller.runtime import running
from kubevisor.controller.runtime.reconciling import Key, Outcome
from kubevisor.controller.vmbackupschedules import deciding, planning

log = logging.getLogger(__name__)

SCHEDULE = kinds.VMBACKUPSCHEDULE
BACKUP = kinds.VMBACKUP
VM = kinds.VIRTUALMACHINE
#: Cron has minutes; a pass every 10 s starts a due backup within 10 s of its instant.
RESYNC_SECONDS = 10.0
MANAGER = vmbackupschedules.CONTROLLER_FIELD_MANAGER
_EPOCH = datetime.fromtimestamp(0, UTC)


def item_of(obj: Mapping[str, Any]) -> planning.Item | None:
    """How pruning sees one VMBackup (None when unreadable)."""
    try:
        backup = vmbackups.VMBackup.model_validate(obj)
    except pydantic.ValidationError:
        return None
    meta = obj.get("metadata") or {}
    st = backup.status or vmbackups.VMBackupStatus()
    return planning.Item(
        name=str(meta.get("name")),
        created=nodes.parse_time(meta.get("creationTimestamp")) or _EPOCH,
        phase=st.phase or vmbackups.VMBackupPhase.PENDING,
        previous=st.chain.previous if st.chain else None,
        chain_length=st.chain.length if st.chain else 1,
        live=st.checkpoint is not None,
        deleting=bool(meta.get("deletionTimestamp")),
    )


def _stamp(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def status_of(obj: Mapping[str, Any], d: deciding.Decision, *, now: datetime) -> dict[str, Any]:
    """The schedule's status (the full set the controller owns; pure)."""
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
    if d.kept:
        out["kept"] = list(d.kept)
    if generation is not None:
        out["observedGeneration"] = generation
    for key, value in (
        ("lastRunAt", _stamp(d.last_run_at)),
        ("nextRunAt", _stamp(d.next_run_at)),
        ("lastBackup", d.last_backup),
    ):
        if value is not None:
            out[key] = value
    return out


class Schedules:
    """The VMBackupSchedule reconciler of one controller process."""

    def __init__(self, rt: running.Runtime) -> None:
        self._rt = rt
        self._reconciler = rt.reconciler(
            SCHEDULE.kind, self.reconcile_once, resync_seconds=RESYNC_SECONDS
        )

    def handlers(self) -> list[operating.Handler]:
        return [operating.OnEvent(SCHEDULE.plural, self.on_event)]

    async def on_event(
        self, type: str | None, namespace: str, name: str, body: dict[str, Any]
    ) -> None:
        if type == "DELETED":
            self._reconciler.forget((namespace, name))
            return
        await self._reconciler.reconcile((namespace, name))

    async def reconcile_once(self, key: Key) -> Outcome:
        namespace, name = key
        client = self._rt.client
        obj = await client.get(SCHEDULE.plural, namespace, name)
        if obj is None or (obj.get("metadata") or {}).get("deletionTimestamp"):
            return Outcome.GONE
        try:
            schedule = vmbackupschedules.VMBackupSchedule.model_validate(obj)
        except pydantic.ValidationError as exc:
            log.warning("VMBackupSchedule %s/%s unreadable: %s", namespace, name, exc)
            return Outcome.WAIT
        vm_obj = await client.get(VM.plural, namespace, schedule.spec.vm_name)
        phase = ((vm_obj or {}).get("status") or {}).get("phase")
        listed = await client.list_namespaced(
            BACKUP.plural,
            namespace,
            label_selector=f"{vmbackupschedules.LABEL_SCHEDULE}={name}",
        )
        items = [i for i in map(item_of, listed) if i is not None]
        meta = obj.get("metadata") or {}
        d = deciding.decide(
            deciding.Inputs(
                schedule=schedule,
                namespace=namespace,
                name=name,
                created=nodes.parse_time(meta.get("creationTimestamp")) or _EPOCH,
                now=datetime.now(UTC),
                items=items,
                vm_running=phase == virtualmachines.VirtualMachinePhase.RUNNING.value,
            )
        )
        if d.create is not None:
            await client.create(BACKUP.plural, namespace, d.create)
        for gone in d.delete:
            await client.delete(BACKUP.plural, namespace, gone)
        wanted = status_of(obj, d, now=datetime.now(UTC))
        current = obj.get("status") or {}
        if any(current.get(k) != v for k, v in wanted.items()):
            obj = await client.apply_status(
                SCHEDULE.plural, SCHEDULE.kind, namespace, name, wanted, field_manager=MANAGER
            )
        for type_, reason, message in d.events:
            self._rt.events.post(
                obj, kind=SCHEDULE.kind, type_=type_, reason=reason, message=message
            )
        return Outcome.WAIT
