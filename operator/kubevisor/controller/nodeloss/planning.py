"""The node-loss plan: which VMs sit on a lost node, what happens to each, and where the
recoverable ones restart. Pure; ``handlers`` gathers the inputs and acts.

Rules, for each VM whose ``status.nodeName`` is a lost node (its Lease expired, or it
has none), in this order:

1. The node is not fenced (no ``node.kubernetes.io/out-of-service`` taint on its Node)
   → NodeLost=True, reason ``AwaitingFence``: nothing is started elsewhere, because the
   old copy may still run and write the VM's disks.
2. Its runStrategy is not Always or RerunOnFailure, or the controller asks it to stay
   stopped → ``NotRestarted`` (it stays placed on the lost node).
3. An unfinished migration of it is recorded → ``NotRestarted`` naming the Migration
   (the migration's own guard owns the VM until it ends).
4. It has a node-local disk → ``NotRecoverable`` naming the disks: they live on the
   lost node, so it keeps them and runs again when the node returns.
5. Its ``status.recovery`` already names a target for this node → ``Recovering`` (the
   VM reconciler moves it; nothing new is chosen).
6. Otherwise it is recoverable: placed (``choose``) in priority order, higher
   ``spec.priority`` first (unset is 0), then older first, then namespace/name, each
   placement counting the ones before it → ``Recovering`` with the chosen node, or
   ``Unschedulable`` with placement's sentence when nothing fits (tried again next pass).

A VM on a node that is not lost gets no NodeLost condition (the handler removes ours).

A node consolidation powered off (``KubevisorPowerOff=True`` on its Node) stops renewing
its Lease too. Holding no VMs (the rebalancer marks only empty nodes) it is in no VM's
``nodeName``, so nothing here looks at it, and placement refuses it while it is marked.
If it holds a VM after all (placed in the moment between the rebalancer's look and its
mark), that VM is treated like any VM of a lost node, rule 1 first: not started elsewhere
until the node is fenced (being marked is not proof that it is off), and the sentence
says the node was powered off by consolidation; the rebalancer wakes a powered-off node
that holds a VM first, in any mode, and the VM runs there again when it is back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pydantic

from kubevisor.api import machines, migrations, nodeloss, nodes, rebalancepolicies
from kubevisor.api.conditions import Reason
from kubevisor.api.virtualmachines import DesiredState, RunStrategy
from kubevisor.controller.placement import placing

Obj = Mapping[str, Any]
VMKey = tuple[str, str]
#: runStrategies that restart a VM elsewhere after its node is lost.
RESTARTED: frozenset[str] = frozenset({RunStrategy.ALWAYS, RunStrategy.RERUN_ON_FAILURE})
#: Places a VM (uid, request) -> placement, counting earlier placements of this pass.
Choose = Callable[[str, placing.Request], placing.Placement]


@dataclass(frozen=True)
class LostNode:
    """A node whose agent stopped renewing its Lease."""

    name: str
    renewed_ago_s: float | None
    """Seconds since its last renewal; None when it has no Lease or never renewed."""
    fenced: bool
    powered_off: bool = False
    """Its Node is marked ``KubevisorPowerOff=True`` (consolidation powered it off)."""

    def since(self) -> str:
        """The sentence part saying when it was last heard of."""
        if self.renewed_ago_s is None:
            return f"node {self.name} has no agent Lease"
        return f"node {self.name} last renewed its Lease {self.renewed_ago_s:.0f}s ago"


@dataclass(frozen=True)
class NodeLost:
    """The NodeLost condition a VM should carry (always status True)."""

    reason: str
    message: str


@dataclass(frozen=True)
class Recovery:
    """A recoverable VM restarts on ``to_node`` (``status.recovery``)."""

    key: VMKey
    uid: str
    from_node: str
    to_node: str


@dataclass(frozen=True)
class Plan:
    """Each VM's NodeLost condition (None: remove ours) and the recoveries to record."""

    conditions: Mapping[VMKey, NodeLost | None]
    recoveries: tuple[Recovery, ...]


def lost_nodes(
    leases: Iterable[nodes.NodeLease],
    node_objects: Iterable[Obj],
    *,
    placed_on: Iterable[str],
    now: datetime,
) -> dict[str, LostNode]:
    """The lost nodes among those VMs are placed on (``placed_on``): an expired Lease
    (``NodeLease.alive``) or none at all. Fenced from the Node objects' taints."""
    node_objects = list(node_objects)
    fenced = nodeloss.fenced_nodes(node_objects)
    off = rebalancepolicies.powered_off(node_objects)
    by_name = {lease.name: lease for lease in leases}
    out: dict[str, LostNode] = {}
    for name in sorted(set(placed_on)):
        lease = by_name.get(name)
        if lease is not None and lease.alive(now):
            continue
        ago = None
        if lease is not None and lease.renew_time is not None:
            ago = max((now - lease.renew_time).total_seconds(), 0.0)
        out[name] = LostNode(name, ago, name in fenced, powered_off=name in off)
    return out


def _meta(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _status(obj: Obj) -> Mapping[str, Any]:
    return obj.get("status") or {}


def _key(obj: Obj) -> VMKey:
    return (str(_meta(obj).get("namespace")), str(_meta(obj).get("name")))


def priority(obj: Obj) -> int:
    """``spec.priority`` (unset or unreadable: 0)."""
    value = (obj.get("spec") or {}).get("priority")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def recovery_order(vms: Iterable[Obj]) -> list[Obj]:
    """Higher priority first, then older (creationTimestamp), then namespace/name."""
    return sorted(
        vms,
        key=lambda vm: (-priority(vm), str(_meta(vm).get("creationTimestamp") or ""), _key(vm)),
    )


def _machine(obj: Obj) -> machines.MachineSpec | None:
    raw = _status(obj).get("machine")
    if not raw:
        return None
    try:
        return machines.MachineSpec.model_validate(raw)
    except pydantic.ValidationError:
        return None


def _verdict(vm: Obj, lost: LostNode) -> NodeLost | None:
    """Rules 1-5 of the module docstring; None means recoverable (rule 6)."""
    since = lost.since()
    if not lost.fenced:
        off = (
            "; consolidation marked it for power-off while it held this VM, so it is woken"
            if lost.powered_off
            else ""
        )
        return NodeLost(
            Reason.AWAITING_FENCE,
            f"{since}{off}; not started elsewhere until the node is fenced (taint "
            f"{nodeloss.TAINT_OUT_OF_SERVICE} on its Node), so two copies never write "
            "one disk.",
        )
    strategy = (vm.get("spec") or {}).get("runStrategy", RunStrategy.ALWAYS)
    status = _status(vm)
    if strategy not in RESTARTED or status.get("desiredState") == DesiredState.STOPPED:
        return NodeLost(
            Reason.NOT_RESTARTED,
            f"{since} and it is fenced; runStrategy {strategy} does not restart the VM "
            "elsewhere, so it stays placed there.",
        )
    record = status.get("migration") or {}
    if record.get("phase") in {p.value for p in migrations.ACTIVE_PHASES}:
        return NodeLost(
            Reason.NOT_RESTARTED,
            f"{since} and it is fenced; Migration {record.get('name')} is "
            f"{record.get('phase')}, the VM restarts elsewhere only after it ends.",
        )
    machine = _machine(vm)
    if machine is None:
        return NodeLost(
            Reason.NOT_RECOVERABLE,
            f"{since} and it is fenced; the VM has no recorded machine to restart.",
        )
    local = sorted(d.name for d in machine.disks if d.storage != "shared")
    if local:
        return NodeLost(
            Reason.NOT_RECOVERABLE,
            f"{since} and it is fenced; the VM cannot be recovered elsewhere: disk"
            f"{'s' if len(local) > 1 else ''} {', '.join(local)} "
            f"{'are' if len(local) > 1 else 'is'} node-local on {lost.name}. It keeps "
            "its disks and runs again when the node returns.",
        )
    target = nodeloss.recovered_to(status)
    if target is not None:
        return NodeLost(Reason.RECOVERING, _recovering(since, target))
    return None


def _recovering(since: str, target: str) -> str:
    return f"{since} and it is fenced; the VM restarts on node {target} from its shared disks."


def plan(lost: Mapping[str, LostNode], vms: Iterable[Obj], *, choose: Choose) -> Plan:
    """The node-loss plan over the whole cluster (see the module docstring). ``choose``
    places one VM and reserves what it takes, so later calls count it."""
    conds: dict[VMKey, NodeLost | None] = {}
    recoverable: list[Obj] = []
    for vm in vms:
        if _meta(vm).get("deletionTimestamp"):
            continue
        key = _key(vm)
        node = _status(vm).get("nodeName")
        if not node or node not in lost:
            conds[key] = None
            continue
        verdict = _verdict(vm, lost[str(node)])
        if verdict is None:
            recoverable.append(vm)
        else:
            conds[key] = verdict
    recoveries: list[Recovery] = []
    for vm in recovery_order(recoverable):
        key, node = _key(vm), str(_status(vm).get("nodeName"))
        machine = _machine(vm)
        assert machine is not None  # _verdict checked it
        uid = str(_meta(vm).get("uid") or "")
        result = choose(uid, placing.request_for(machine))
        since = lost[node].since()
        if result.node is None:
            conds[key] = NodeLost(
                Reason.UNSCHEDULABLE,
                f"{since} and it is fenced; the VM waits to restart elsewhere: {result.reason}.",
            )
            continue
        conds[key] = NodeLost(Reason.RECOVERING, _recovering(since, result.node))
        recoveries.append(Recovery(key, uid, node, result.node))
    return Plan(conds, tuple(recoveries))
