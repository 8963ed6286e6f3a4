"""From the planner's answer to what the rebalancer writes: Migrations, Node power marks,
the policy's status. Pure; ``handlers`` does the I/O.

Rules:

1. A pass is *due* when no Migration of ours (label ``rebalancepolicies.LABEL_REBALANCE``)
   is unfinished and ``intervalSeconds`` have passed since ``status.lastPassAt`` (or there
   was none). Ours still running: wait for them (the next plan sees where VMs ended up).
2. Each move is a Migration ``<vm>-<mode>-<pass>`` (``balance``/``consolidate``, the pass's
   Unix time), labelled with the VM and the mode, owned by the VM, with ``targetNode``
   set: it waits in the parallel limits like any other, and ``spec.cancel`` (or deleting
   it) stops it; the next pass plans afresh.
3. A node the plan marks for power-off is marked only once it really holds nothing;
   one emptied by this pass's moves is marked by a later pass.
4. Marking cordons the Node (placement and migrations keep away) and sets the condition;
   waking uncordons it, but only a Node whose condition says we marked it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kubevisor.api import groups, kinds, migrations, rebalancepolicies
from kubevisor.controller.placement import placing
from kubevisor.controller.placement import rebalancing as rb

Obj = Mapping[str, Any]
Reason = rebalancepolicies.RebalanceReason
_MAX_NAME = 253


def migration_name(vm: str, mode: rebalancepolicies.Mode, stamp: int) -> str:
    """``<vm>-<mode>-<stamp>``; shortened with a hash past a name's 253 bytes."""
    name = f"{vm}-{mode.value.lower()}-{stamp}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: _MAX_NAME - 11].rstrip('-.')}-{digest}"


def ours_unfinished(migration_objs: Iterable[Obj]) -> list[str]:
    """``namespace/name`` of our Migrations that have not ended."""
    out = []
    for m in migration_objs:
        meta = m.get("metadata") or {}
        if rebalancepolicies.LABEL_REBALANCE not in (meta.get("labels") or {}):
            continue
        if (m.get("status") or {}).get("phase") not in migrations.FINAL_PHASES:
            out.append(f"{meta.get('namespace')}/{meta.get('name')}")
    return sorted(out)


def due(policy: rebalancepolicies.RebalancePolicy, ours: list[str], *, now: datetime) -> str:
    """Empty when a pass is due (rule 1), else why not."""
    if ours:
        return f"waiting for {len(ours)} Migration(s) of the last pass ({', '.join(ours[:3])})"
    last = policy.status.last_pass_at if policy.status else None
    if last is not None and now < last + timedelta(seconds=policy.spec.interval_seconds):
        return "not due yet"
    return ""


@dataclass(frozen=True)
class NewMigration:
    namespace: str
    name: str
    vm: str
    vm_uid: str
    source: str
    target: str


@dataclass(frozen=True)
class Actions:
    """What one pass writes."""

    create: tuple[NewMigration, ...]
    mark_off: tuple[str, ...]
    wake: tuple[str, ...]
    reason: Reason
    message: str


def actions(
    plan: rb.Plan,
    *,
    mode: rebalancepolicies.Mode,
    hosts: Iterable[rb.Host],
    guests: Iterable[rb.Guest],
    uids: Mapping[str, str],
    powered_off: frozenset[str],
    stamp: int,
) -> Actions:
    """The writes for ``plan`` (rules 2 and 3); ``uids`` maps ``namespace/name`` to VM uid."""
    holding = {g.node for g in guests}
    empty = {h.name for h in hosts if h.name not in holding and h.used == placing.Usage()}
    create = []
    for m in plan.moves:
        ns, _, name = m.vm.partition("/")
        create.append(
            NewMigration(
                ns, migration_name(name, mode, stamp), name, uids.get(m.vm, ""), m.source, m.target
            )
        )
    mark = tuple(n for n in plan.power_off if n in empty and n not in powered_off)
    wake = tuple(n for n in plan.power_on if n in powered_off)
    if mode is rebalancepolicies.Mode.OFF:
        reason = Reason.DISABLED
    elif create:
        reason = Reason.MOVING
    elif mode is rebalancepolicies.Mode.BALANCE:
        reason = Reason.BALANCED
    else:
        reason = Reason.CONSOLIDATED
    return Actions(tuple(create), mark, wake, reason, plan.message)


def body(new: NewMigration, mode: rebalancepolicies.Mode) -> dict[str, Any]:
    """The Migration object for ``new`` (rule 2)."""
    return {
        "apiVersion": groups.API_VERSION,
        "kind": kinds.MIGRATION.kind,
        "metadata": {
            "name": new.name,
            "namespace": new.namespace,
            "labels": {groups.LABEL_VM: new.vm, rebalancepolicies.LABEL_REBALANCE: mode.value},
            "ownerReferences": [
                {
                    "apiVersion": groups.API_VERSION,
                    "kind": kinds.VIRTUALMACHINE.kind,
                    "name": new.vm,
                    "uid": new.vm_uid,
                }
            ],
        },
        "spec": {"vmName": new.vm, "targetNode": new.target},
    }


def node_condition(*, off: bool, message: str, now: str) -> dict[str, Any]:
    """The Node condition ``NODE_POWER_OFF`` (True: marked; False: woken)."""
    return {
        "type": rebalancepolicies.NODE_POWER_OFF,
        "status": "True" if off else "False",
        "reason": (Reason.EMPTIED if off else Reason.WOKEN).value,
        "message": message,
        "lastTransitionTime": now,
        "lastHeartbeatTime": now,
    }
