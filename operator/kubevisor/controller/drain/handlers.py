"""The drain reconciler: one pass over the whole cluster every ``RESYNC_SECONDS``.

Each pass lists the Node objects (cordon = ``spec.unschedulable``), every VM and every
Migration, asks ``planning.plan`` and acts: creates the missing drain Migrations (a 409
means one exists: nothing duplicated on resync or after a restart) and applies each VM's
Evictable condition with its own field manager (``groups.DRAIN_FIELD_MANAGER``), so the
VM reconciler's full apply of its conditions never removes it and this one never removes
theirs. A VM whose Evictable turns False gets a Warning Event.
"""

from __future__ import annotations

from datetime import UTC, datetime

from kubevisor.api import conditions, groups, kinds
from kubevisor.api.conditions import ConditionType
from kubevisor.controller.drain import planning
from kubevisor.controller.kube import client as kube
from kubevisor.controller.kube import operating
from kubevisor.controller.placement import placing
from kubevisor.controller.runtime import running
from kubevisor.controller.runtime.reconciling import Key, Outcome

RESYNC_SECONDS = 5.0
ALL: Key = ("", "*")
VM = kinds.VIRTUALMACHINE


class Drain:
    """The drain reconciler of one controller process."""

    def __init__(self, rt: running.Runtime) -> None:
        self._rt = rt
        self._reconciler = rt.reconciler("Drain", self.reconcile_all, resync_seconds=RESYNC_SECONDS)
        self.passes = 0

    def handlers(self) -> list[operating.Handler]:
        return [operating.Lifecycle(startup=self._start, cleanup=self._stop)]

    async def _start(self) -> None:
        self._reconciler.spawn(ALL)

    async def _stop(self) -> None:
        return None

    async def reconcile_all(self, key: Key) -> Outcome:
        """One pass; always ``WAIT`` (cordons change without a kubevisor event)."""
        api = self._rt.client
        cordoned = placing.cordoned(await api.list_nodes())
        vms = await api.list_all(VM.plural)
        migs = await api.list_all(kinds.MIGRATION.plural)
        result = planning.plan(cordoned, vms, migs)
        for new in result.create:
            await api.create(kinds.MIGRATION.plural, new.namespace, planning.body(new))
        now = datetime.now(UTC)
        for vm in vms:
            meta = vm["metadata"]
            wanted = result.evictable.get((meta["namespace"], meta["name"]))
            current = conditions.get_condition(
                list((vm.get("status") or {}).get("conditions") or []), ConditionType.EVICTABLE
            )
            if wanted is None and current is None:
                continue
            if (
                wanted is not None
                and current is not None
                and (
                    current.get("status"),
                    current.get("reason"),
                    current.get("message"),
                )
                == (wanted.status, wanted.reason, wanted.message)
            ):
                continue
            conds = (
                []
                if wanted is None
                else conditions.set_condition(
                    [current] if current else [],
                    type=ConditionType.EVICTABLE,
                    status="True" if wanted.status == "True" else "False",
                    reason=wanted.reason,
                    message=wanted.message,
                    generation=meta.get("generation"),
                    now=now,
                )
            )
            try:
                await api.apply_status(
                    VM.plural,
                    VM.kind,
                    meta["namespace"],
                    meta["name"],
                    {"conditions": conds},
                    field_manager=groups.DRAIN_FIELD_MANAGER,
                )
            except Exception as exc:
                if kube.is_gone(exc):
                    continue
                raise
            if wanted is not None and wanted.status == "False":
                self._rt.events.post(
                    vm, kind=VM.kind, type_="Warning", reason=wanted.reason, message=wanted.message
                )
        self.passes += 1
        return Outcome.WAIT
