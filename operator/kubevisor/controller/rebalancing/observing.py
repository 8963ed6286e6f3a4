"""What the rebalancer sees: the planner's hosts and guests from the raw objects.

Pure. The handler lists the node Leases, the core/v1 Node objects, every VM and every
Migration, and calls :func:`observe`. Each guest carries what the migration preconditions
(``controller/migrations/preconditions.refusals_for``, capacity aside: that is the
planner's, from the live usage) say about every other node, so the planner never plans a
move a precondition would refuse. A guest stays (``Guest.stay``), in this order, when:

1. it is being deleted;
2. ``spec.rebalance`` is Never;
3. its machine has a nodeSelector (pinned: the user chose where it runs);
4. it is not Running or not placed (only a running guest migrates live);
5. an unfinished Migration moves it (any name), or one succeeded and the VM reconciler
   has not moved ``status.nodeName`` yet;
6. no other node passes its preconditions (the message names the first refusal).

A node is *powered off* when its Node object carries the condition
``rebalancepolicies.NODE_POWER_OFF`` with status True. The rebalancer cordoned it when it
marked it, so placement keeps away; to the planner it is not cordoned but powered off, so
it can be woken.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pydantic

from kubevisor.api import migrations, nodes, rebalancepolicies, virtualmachines
from kubevisor.controller.migrations import preconditions
from kubevisor.controller.placement import ledger, placing
from kubevisor.controller.placement import rebalancing as rb

Obj = Mapping[str, Any]
#: The migration policy the rebalancer's Migrations use (the defaults: no block copy).
POLICY = migrations.MigrationPolicy()


@dataclass(frozen=True)
class Observed:
    """The planner's inputs, and each Node's power-off condition as read."""

    hosts: tuple[rb.Host, ...]
    guests: tuple[rb.Guest, ...]
    powered_off: frozenset[str]


def _meta(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def last_rates(migration_objs: Iterable[Obj]) -> dict[str, tuple[int | None, int | None]]:
    """Per ``namespace/vm``: (dirty rate, transfer rate) from the last progress sample of
    its most recently finished Migration that reported both."""
    best: dict[str, tuple[str, int, int]] = {}
    for m in migration_objs:
        status = m.get("status") or {}
        progress = status.get("progress") or {}
        dirty = progress.get("dirtyRateBytesPerSecond")
        transfer = progress.get("transferRateBytesPerSecond")
        if dirty is None or transfer is None or status.get("phase") not in migrations.FINAL_PHASES:
            continue
        key = f"{_meta(m).get('namespace')}/{(m.get('spec') or {}).get('vmName')}"
        when = str(status.get("completedAt") or "")
        if key not in best or when > best[key][0]:
            best[key] = (when, int(dirty), int(transfer))
    return {k: (d, t) for k, (_, d, t) in best.items()}


def _unfinished(migration_objs: Iterable[Obj]) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in migration_objs:
        if (m.get("status") or {}).get("phase") not in migrations.FINAL_PHASES:
            key = f"{_meta(m).get('namespace')}/{(m.get('spec') or {}).get('vmName')}"
            out.setdefault(key, str(_meta(m).get("name")))
    return out


def observe(
    *,
    leases: Iterable[Obj],
    node_objects: Iterable[Obj],
    vms: Iterable[Obj],
    migration_objs: Iterable[Obj],
    now: datetime,
    cpu_overcommit: float = 1.0,
    require_rtt: bool = True,
) -> Observed:
    """Hosts and guests for ``rebalancing.plan`` (rules in the module docstring)."""
    node_objects, vms, migration_objs = list(node_objects), list(vms), list(migration_objs)
    off = rebalancepolicies.powered_off(node_objects)
    cordoned = placing.cordoned(node_objects) - off
    by_name = {nodes.parse(lease).name: lease for lease in leases}
    used = ledger.usage_by_node(vms)
    hosts = tuple(
        rb.Host(
            placing.node_from_lease(lease, now=now, cordoned=cordoned),
            used.get(name, placing.Usage()),
            powered_off=name in off,
        )
        for name, lease in sorted(by_name.items())
    )
    rates = last_rates(migration_objs)
    unfinished = _unfinished(migration_objs)
    targets_memo: dict[tuple[str, str], tuple[frozenset[str], str]] = {}
    guests = []
    for obj in vms:
        try:
            vm = virtualmachines.VirtualMachine.model_validate(obj)
        except pydantic.ValidationError:
            continue
        status = vm.status
        if status is None or not status.node_name or status.machine is None:
            continue
        key = f"{vm.metadata.namespace}/{vm.metadata.name}"
        machine = status.machine
        stay = ""
        targets: frozenset[str] | None = None
        if _meta(obj).get("deletionTimestamp"):
            stay = "being deleted"
        elif vm.spec.rebalance is virtualmachines.Rebalance.NEVER:
            stay = "spec.rebalance is Never"
        elif machine.node_selector:
            stay = "pinned by nodeSelector"
        elif status.phase != virtualmachines.VirtualMachinePhase.RUNNING:
            stay = f"not Running ({status.phase.value if status.phase else 'no phase'})"
        elif key in unfinished:
            stay = f"Migration {unfinished[key]} is moving it"
        elif (
            status.migration is not None
            and status.migration.phase is migrations.MigrationPhase.SUCCEEDED
            and status.migration.source_node == status.node_name
        ):
            stay = f"Migration {status.migration.name} moved it; its node is being updated"
        elif status.node_name not in by_name:
            stay = f"its node {status.node_name} has no agent Lease"
        else:
            memo_key = (machine.model_dump_json(), status.node_name)
            if memo_key not in targets_memo:
                targets_memo[memo_key] = _targets(
                    machine,
                    source=status.node_name,
                    by_name=by_name,
                    cordoned=cordoned | off,
                    now=now,
                    cpu_overcommit=cpu_overcommit,
                    require_rtt=require_rtt,
                )
            targets, why = targets_memo[memo_key]
            if not targets:
                stay = f"no other node passes the migration preconditions ({why})"
        dirty, transfer = rates.get(key, (None, None))
        guests.append(
            rb.Guest(
                key=key,
                node=status.node_name,
                usage=placing.usage_of(machine),
                stay=stay,
                targets=targets,
                dirty_rate_bytes_per_second=dirty,
                transfer_rate_bytes_per_second=transfer,
            )
        )
    return Observed(hosts, tuple(guests), off)


def _targets(
    machine: Any,
    *,
    source: str,
    by_name: Mapping[str, Obj],
    cordoned: frozenset[str],
    now: datetime,
    cpu_overcommit: float,
    require_rtt: bool,
) -> tuple[frozenset[str], str]:
    """Nodes (other than ``source``) whose preconditions accept ``machine`` on an empty
    node, and the first refusal seen (for the stay message)."""
    src = nodes.parse(by_name[source])
    ok = []
    first = ""
    for name, lease in sorted(by_name.items()):
        if name == source:
            continue
        refusals = preconditions.refusals_for(
            lease,
            source=src,
            machine=machine,
            policy=POLICY,
            used=placing.Usage(),
            now=now,
            cpu_overcommit=cpu_overcommit,
            require_rtt=require_rtt,
            cordoned=name in cordoned,
        )
        # a powered-off node refuses as cordoned; it takes guests again once woken
        if not refusals:
            ok.append(name)
        elif not first:
            first = refusals[0].message.rstrip(".")
    return frozenset(ok), first or "no other node"
