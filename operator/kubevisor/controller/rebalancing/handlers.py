"""The rebalancer: one cluster-wide pass every ``RESYNC_SECONDS`` (like the drain's).

Each pass reads the RebalancePolicy ``cluster`` (none: nothing to do) and every Migration;
when a pass is due (``planning.due``) it lists the node Leases, the Node objects and every
VM, builds the planner's view (``observing.observe``), plans
(``placement/rebalancing.plan``) and acts (``planning.actions``): creates the Migrations
(a 409 means it exists), marks emptied Nodes for power-off (cordon, then the
``KubevisorPowerOff`` condition, then a Normal Event ``PowerOff`` on the Node), wakes
marked ones (condition False, uncordon, Event ``PowerOn``), and applies the policy's
status as field manager ``rebalancepolicies.FIELD_MANAGER``. A pass that is not due
writes nothing, except the Ready reason Moving while our Migrations run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pydantic

from kubevisor.api import conditions, kinds, nodes, rebalancepolicies
from kubevisor.controller.kube import client as kube
from kubevisor.controller.kube import operating
from kubevisor.controller.migrations import handlers as migration_handlers
from kubevisor.controller.placement import rebalancing, reserving
from kubevisor.controller.rebalancing import observing, planning
from kubevisor.controller.runtime import running
from kubevisor.controller.runtime.reconciling import Key, Outcome

log = logging.getLogger(__name__)

RESYNC_SECONDS = 5.0
ALL: Key = ("", "*")
POLICY = kinds.REBALANCEPOLICY
MANAGER = rebalancepolicies.FIELD_MANAGER
Reason = rebalancepolicies.RebalanceReason


class Rebalancing:
    """The rebalancer of one controller process."""

    def __init__(self, rt: running.Runtime, *, environ: Mapping[str, str] = os.environ) -> None:
        self._rt = rt
        self._require_rtt = migration_handlers.require_rtt(environ)
        self._reconciler = rt.reconciler(
            "Rebalancing", self.reconcile_all, resync_seconds=RESYNC_SECONDS
        )
        self.passes = 0

    def handlers(self) -> list[operating.Handler]:
        return [operating.Lifecycle(startup=self._start, cleanup=self._stop)]

    async def _start(self) -> None:
        self._reconciler.spawn(ALL)

    async def _stop(self) -> None:
        return None

    async def reconcile_all(self, key: Key) -> Outcome:
        """One look; always ``WAIT`` (load changes without a kubevisor event)."""
        api = self._rt.client
        obj = await api.get_cluster(POLICY.plural, rebalancepolicies.NAME)
        if obj is None:
            return Outcome.WAIT
        try:
            policy = rebalancepolicies.RebalancePolicy.model_validate(obj)
        except pydantic.ValidationError as exc:
            log.warning("RebalancePolicy unreadable: %s", exc)
            return Outcome.WAIT
        now = datetime.now(UTC)
        migs = await api.list_all(kinds.MIGRATION.plural)
        ours = planning.ours_unfinished(migs)
        why_not = planning.due(policy, ours, now=now)
        if why_not:
            if ours:
                await self._apply(obj, policy, Reason.MOVING, why_not, now=now)
            return Outcome.WAIT
        node_objects = await api.list_nodes()
        vms = await api.list_all(kinds.VIRTUALMACHINE.plural)
        seen = observing.observe(
            leases=await api.list_leases(nodes.LEASE_NAMESPACE, nodes.AGENT_SELECTOR),
            node_objects=node_objects,
            vms=vms,
            migration_objs=migs,
            now=now,
            cpu_overcommit=reserving.CPU_OVERCOMMIT,
            require_rtt=self._require_rtt,
        )
        plan = rebalancing.plan(
            seen.hosts, seen.guests, policy.spec, cpu_overcommit=reserving.CPU_OVERCOMMIT
        )
        uids = {}
        for v in vms:
            meta = v.get("metadata") or {}
            uids[f"{meta.get('namespace')}/{meta.get('name')}"] = str(meta.get("uid") or "")
        act = planning.actions(
            plan,
            mode=policy.spec.mode,
            hosts=seen.hosts,
            guests=seen.guests,
            uids=uids,
            powered_off=seen.powered_off,
            stamp=int(now.timestamp()),
        )
        created = []
        for new in act.create:
            await api.create(
                kinds.MIGRATION.plural, new.namespace, planning.body(new, policy.spec.mode)
            )
            created.append(new)
        by_node = {str((n.get("metadata") or {}).get("name")): n for n in node_objects}
        stamp = conditions.format_time(now)
        for name in act.mark_off:
            await self._power(by_node.get(name), name, off=True, message=plan.message, now=stamp)
        for name in act.wake:
            await self._power(by_node.get(name), name, off=False, message=plan.message, now=stamp)
        off = (set(seen.powered_off) | set(act.mark_off)) - set(act.wake)
        status_extra: dict[str, Any] = {
            "lastPassAt": stamp,
            "moves": [
                {
                    "vm": f"{n.namespace}/{n.vm}",
                    "sourceNode": n.source,
                    "targetNode": n.target,
                    "migration": n.name,
                }
                for n in created
            ],
            "bytesPlanned": plan.cost_bytes,
            "poweredOffNodes": sorted(off),
        }
        await self._apply(obj, policy, act.reason, act.message, now=now, extra=status_extra)
        if created:
            self._rt.events.post(
                obj,
                kind=POLICY.kind,
                type_="Normal",
                reason=Reason.MOVING,
                message=f"{len(created)} Migration(s): {act.message}",
            )
        self.passes += 1
        return Outcome.WAIT

    async def _power(
        self, node_obj: Mapping[str, Any] | None, name: str, *, off: bool, message: str, now: str
    ) -> None:
        """Mark (cordon, condition) or wake (condition, uncordon) one Node."""
        api = self._rt.client
        if node_obj is None:
            log.warning("no Node object %s to mark for power %s", name, "off" if off else "on")
            return
        why = (
            f"kubevisor emptied node {name} and marks it for power-off ({message})"
            if off
            else f"kubevisor brings node {name} back ({message})"
        )
        try:
            if off:
                await api.set_unschedulable(name, True)
            await api.patch_node_condition(
                name, planning.node_condition(off=off, message=why, now=now)
            )
            if not off:
                await api.set_unschedulable(name, False)
        except Exception as exc:
            if kube.is_gone(exc):
                return
            raise
        self._rt.events.post(
            dict(node_obj),
            kind="Node",
            type_="Normal",
            reason="PowerOff" if off else "PowerOn",
            message=why,
        )

    async def _apply(
        self,
        obj: Mapping[str, Any],
        policy: rebalancepolicies.RebalancePolicy,
        reason: Reason,
        message: str,
        *,
        now: datetime,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        current = list((obj.get("status") or {}).get("conditions") or [])
        before = conditions.get_condition(current, conditions.ConditionType.READY)
        if extra is None and before is not None and before.get("reason") == reason:
            return
        conds = conditions.set_condition(
            current,
            type=conditions.ConditionType.READY,
            status="True",
            reason=reason,
            message=message,
            generation=policy.metadata.generation,
            now=now,
        )
        status: dict[str, Any] = dict(obj.get("status") or {})
        status.update(extra or {})
        if policy.metadata.generation is not None:
            status["observedGeneration"] = policy.metadata.generation
        status["conditions"] = [c for c in conds if c.get("type") == conditions.ConditionType.READY]
        status["message"] = message
        status["phase"] = rebalancepolicies.RebalancePhase(reason.value).value
        await self._rt.client.apply_cluster_status(
            POLICY.plural, POLICY.kind, rebalancepolicies.NAME, status, field_manager=MANAGER
        )
