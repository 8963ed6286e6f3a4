"""VRF handlers: refuse cluster-level conflicts, allocate tables, summarise the nodes.

kopf delivers VRF watch events; each one asks the runtime for a pass over the whole VRF
set (one key, ``ALL``), which re-reads every VRF and every node Lease and decides all
VRFs at once (``planning.decide``): conflicts and table allocation depend on the other
VRFs, so deciding one object at a time would be order-dependent. Events that arrive
while a pass is queued fold into it. The runtime's resync repeats the pass every
``RESYNC_SECONDS``, which is how new or lost nodes change ``readyNodes``.

Status: the controller applies ``phase``, ``readyNodes``, ``tableAllocated``,
``observedGeneration`` and conditions Ready/Scheduled with server-side apply (field
manager kubevisor-controller). Agents merge-patch only ``status.nodes.<their node>``, a
field the controller never lists, so neither side clobbers the other. No finalizer: the
agents are level-based and remove a deleted VRF on their next pass (also after a restart).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubevisor.api import conditions, kinds, nodes
from kubevisor.api.conditions import ConditionType, Reason
from kubevisor.controller.kube import client as kube
from kubevisor.controller.kube import operating
from kubevisor.controller.placement import placing
from kubevisor.controller.runtime import running
from kubevisor.controller.runtime.reconciling import Key, Outcome
from kubevisor.controller.vrfs import planning, status

#: The kind served here (names from the one registry of kinds).
VRF = kinds.VRF
RESYNC_SECONDS = 5.0
#: Reasons of Ready=False that are a normal wait, not worth a Warning Event.
QUIET_REASONS = frozenset({Reason.IN_PROGRESS, Reason.AS_EXPECTED})
#: The one reconcile key: every pass decides the whole VRF set.
ALL: Key = ("", "*")


class VRFs:
    """The VRF reconciler of one controller process."""

    def __init__(self, rt: running.Runtime) -> None:
        self._rt = rt
        self._reconciler = rt.reconciler(
            VRF.kind, self.reconcile_all, resync_seconds=RESYNC_SECONDS
        )
        self.known: set[Key] = set()
        """The VRFs this controller serves (its namespaces), from the watch."""
        self.passes = 0

    def handlers(self) -> list[operating.Handler]:
        return [operating.OnEvent(VRF.plural, self.on_event)]

    async def on_event(
        self, type: str | None, namespace: str, name: str, body: dict[str, Any]
    ) -> None:
        """Every VRF event (agents' node entries included) asks for a pass."""
        if type == "DELETED":
            self.known.discard((namespace, name))
        else:
            self.known.add((namespace, name))
        self._reconciler.spawn(ALL)

    async def reconcile_all(self, key: Key) -> Outcome:
        """One pass: read every VRF and Lease, decide, apply the statuses that changed.

        Always ``WAIT``: node Leases change without a VRF event."""
        api = self._rt.client
        objs = await api.list_all(VRF.plural)
        leases = await api.list_leases(nodes.LEASE_NAMESPACE, nodes.AGENT_SELECTOR)
        now = datetime.now(UTC)
        found = [placing.node_from_lease(lease, now=now) for lease in leases]
        live = [o for o in objs if not (o.get("metadata") or {}).get("deletionTimestamp")]
        items = {planning.item_from(o).key: (o, planning.item_from(o)) for o in live}
        decisions = planning.decide([i for _, i in items.values()], found)
        for vrf, (obj, item) in sorted(items.items()):
            if vrf not in self.known:
                continue  # another controller's namespace
            wanted = status.build_status(item, decisions[vrf], now=now)
            if status.same(item.status, wanted):
                continue
            try:
                await api.apply_status(VRF.plural, VRF.kind, item.namespace, item.name, wanted)
            except Exception as exc:
                if kube.is_gone(exc):
                    continue
                raise
            self._warn_on_refusal(obj, item.status, wanted)
        self.passes += 1
        return Outcome.WAIT

    def _warn_on_refusal(
        self, obj: dict[str, Any], before: Mapping[str, Any], after: Mapping[str, Any]
    ) -> None:
        """A Warning when Ready turned False for a reason that is not a normal wait."""
        old = conditions.get_condition(list(before.get("conditions") or []), ConditionType.READY)
        new = conditions.get_condition(after["conditions"], ConditionType.READY) or {}
        changed = (old or {}).get("reason") != new.get("reason")
        if changed and new.get("status") == "False" and new.get("reason") not in QUIET_REASONS:
            self._rt.events.post(
                obj,
                kind=VRF.kind,
                type_="Warning",
                reason=str(new["reason"]),
                message=str(new["message"]),
            )
