"""The node-loss reconciler: one pass over the whole cluster every ``RESYNC_SECONDS``.

Each pass lists the agents' Leases, the Node objects (fencing = the out-of-service
taint) and every VM, asks ``planning.plan`` and acts, as field manager
``nodeloss.FIELD_MANAGER`` (so the VM reconciler's full apply never removes what this
one owns, and this one never touches theirs):

- each VM on a lost node gets its NodeLost condition (True, with the plan's reason and
  sentence) and a Warning Event when the reason changes; a VM whose node is not lost
  gets ours removed (and a Normal ``NodeRecovered`` Event if it had one);
- each recovery is recorded as ``status.recovery`` {fromNode, toNode} together with the
  condition, in one apply guarded by the resourceVersion read (a VM that changed since,
  say moved by a migration, is judged again next pass). The VM reconciler then moves
  ``nodeName`` and the ``kubevisor.io/node`` label (``nodeloss.recovered_to``).

Recoveries are placed through the controller's one ``Placer``, in the plan's priority
order: each choice is reserved in the placement ledger at once, so the next VM, and any
VM the VM reconciler places meanwhile, counts it; a write that fails releases it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from kubevisor.api import conditions, kinds, nodeloss, nodes
from kubevisor.api.conditions import ConditionType
from kubevisor.controller.kube import client as kube
from kubevisor.controller.kube import operating
from kubevisor.controller.nodeloss import planning
from kubevisor.controller.placement import placing, reserving
from kubevisor.controller.runtime import running
from kubevisor.controller.runtime.reconciling import Key, Outcome

log = logging.getLogger(__name__)

RESYNC_SECONDS = 2.0
ALL: Key = ("", "*")
VM = kinds.VIRTUALMACHINE


def _tail(message: object) -> str:
    """A NodeLost message without its first clause (how long ago the node renewed its
    Lease grows every pass; only what follows is compared, so an unchanged verdict is
    not rewritten every pass)."""
    return str(message or "").partition("; ")[2]


def same(current: dict[str, Any] | None, wanted: planning.NodeLost | None) -> bool:
    """Whether the VM already carries ``wanted`` (pure)."""
    if current is None or wanted is None:
        return current is None and wanted is None
    return (
        current.get("status") == "True"
        and current.get("reason") == wanted.reason
        and _tail(current.get("message")) == _tail(wanted.message)
    )


class NodeLoss:
    """The node-loss reconciler of one controller process."""

    def __init__(self, rt: running.Runtime, *, placer: reserving.Placer) -> None:
        self._rt = rt
        self._placer = placer
        self._reconciler = rt.reconciler(
            "NodeLoss", self.reconcile_all, resync_seconds=RESYNC_SECONDS
        )
        self.passes = 0

    def handlers(self) -> list[operating.Handler]:
        return [operating.Lifecycle(startup=self._start, cleanup=self._stop)]

    async def _start(self) -> None:
        self._reconciler.spawn(ALL)

    async def _stop(self) -> None:
        return None

    async def reconcile_all(self, key: Key) -> Outcome:
        """One pass; always ``WAIT`` (Leases expire and taints appear without a
        kubevisor event)."""
        api = self._rt.client
        now = datetime.now(UTC)
        vms = await api.list_all(VM.plural)
        placed_on = {str(n) for vm in vms if (n := (vm.get("status") or {}).get("nodeName"))}
        leases = [
            nodes.parse(lease)
            for lease in await api.list_leases(nodes.LEASE_NAMESPACE, nodes.AGENT_SELECTOR)
        ]
        node_objects = await api.list_nodes()
        lost = planning.lost_nodes(leases, node_objects, placed_on=placed_on, now=now)
        candidates: list[placing.Node] = []
        if any(n.fenced for n in lost.values()):
            await self._placer.ready(api)
            candidates = await self._placer.nodes(api, now=now)

        def choose(uid: str, request: placing.Request) -> placing.Placement:
            return self._placer.choose(uid, request, candidates)

        result = planning.plan(lost, vms, choose=choose)
        recoveries = {r.key: r for r in result.recoveries}
        for vm in vms:
            meta = vm["metadata"]
            vkey = (meta["namespace"], meta["name"])
            if vkey not in result.conditions:
                continue
            await self._apply(vm, result.conditions[vkey], recoveries.get(vkey), now=now)
        self.passes += 1
        return Outcome.WAIT

    async def _apply(
        self,
        vm: dict[str, Any],
        wanted: planning.NodeLost | None,
        recovery: planning.Recovery | None,
        *,
        now: datetime,
    ) -> None:
        meta = vm["metadata"]
        current = conditions.get_condition(
            list((vm.get("status") or {}).get("conditions") or []), ConditionType.NODE_LOST
        )
        if recovery is None and same(current, wanted):
            return
        status: dict[str, Any] = {
            "conditions": []
            if wanted is None
            else conditions.set_condition(
                [current] if current else [],
                type=ConditionType.NODE_LOST,
                status="True",
                reason=wanted.reason,
                message=wanted.message,
                generation=meta.get("generation"),
                now=now,
            )
        }
        record = nodeloss.recovery(vm.get("status") or {})
        if recovery is not None:
            status["recovery"] = {"fromNode": recovery.from_node, "toNode": recovery.to_node}
        elif record is not None:
            # the record stays ours (an apply without it would drop it)
            status["recovery"] = record.model_dump(mode="json", by_alias=True)
        try:
            written = await self._rt.client.apply_status(
                VM.plural,
                VM.kind,
                meta["namespace"],
                meta["name"],
                status,
                field_manager=nodeloss.FIELD_MANAGER,
                resource_version=meta.get("resourceVersion") if recovery is not None else None,
            )
        except Exception as exc:
            if recovery is not None:
                self._placer.release(recovery.uid)
            if kube.is_gone(exc) or kube.is_conflict(exc):
                return
            raise
        if recovery is not None:
            self._placer.confirm(recovery.uid, written)
            log.info(
                "VM %s/%s: node %s lost and fenced; restarting on node %s",
                meta["namespace"],
                meta["name"],
                recovery.from_node,
                recovery.to_node,
            )
        if wanted is None:
            if current is not None:
                node = (vm.get("status") or {}).get("nodeName")
                self._rt.events.post(
                    vm,
                    kind=VM.kind,
                    type_="Normal",
                    reason="NodeRecovered",
                    message=f"its node {node} is no longer lost.",
                )
            return
        if current is None or current.get("reason") != wanted.reason:
            self._rt.events.post(
                vm, kind=VM.kind, type_="Warning", reason=wanted.reason, message=wanted.message
            )
