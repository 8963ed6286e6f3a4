"""Placement: which node a VM runs on, or a sentence saying why none fits.

Pure functions over plain data: nodes as the agents describe them in their Leases
(docs/architecture.md, "Nodes"), usage summed from the VMs already placed. The
handler gathers both, calls ``place`` and records the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubevisor.api import machines, nodes, quantities


@dataclass(frozen=True)
class Node:
    """One node as its agent describes it."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    cpu: int = 0
    memory_bytes: int = 0
    gpus: int = 0
    networks: frozenset[str] = frozenset()
    shared_storage: str | None = None
    alive: bool = True
    cordoned: bool = False
    """Its Node object has ``spec.unschedulable: true`` (``kubectl cordon``): no new VM
    and no migration target goes there. The Lease stays the liveness signal."""
    storage_backends: frozenset[str] = frozenset()
    """StorageBackends its agent reports reaching (``nodes.Capacity.storage_backends``)."""
    powered_off: bool = False
    """Its Node carries ``KubevisorPowerOff=True`` (consolidation emptied it, it is off or
    going off): nothing is placed there even if someone uncordons it; the rebalancer
    wakes it first when capacity runs short."""


@dataclass(frozen=True)
class Usage:
    """Resources the VMs already placed on a node take."""

    cpu: int = 0
    memory_bytes: int = 0
    gpus: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.cpu + other.cpu,
            self.memory_bytes + other.memory_bytes,
            self.gpus + other.gpus,
        )


@dataclass(frozen=True)
class Request:
    """What a VM asks of its node."""

    cpu: int
    memory_bytes: int
    gpus: int
    networks: frozenset[str]
    node_selector: Mapping[str, str]
    only_nodes: frozenset[str] | None = None
    """Nodes the VM may run on at all (a clone of local disks: the source's node)."""
    only_reason: str = ""
    """Why ``only_nodes`` restricts it, e.g. "clone source disks are on node-a"."""
    storage_backends: frozenset[str] = frozenset()
    """StorageBackends the VM's disks name: the node must reach each."""


@dataclass(frozen=True)
class Placement:
    """The answer: ``node`` when one fits, else ``None`` and ``reason`` says why."""

    node: str | None
    reason: str


def request_for(
    machine: machines.MachineSpec,
    *,
    only_nodes: Iterable[str] | None = None,
    only_reason: str = "",
) -> Request:
    """The resources and constraints of a resolved machine."""
    return Request(
        cpu=machine.cpu.cores,
        memory_bytes=quantities.to_bytes(machine.memory),
        gpus=machine.gpus,
        networks=frozenset(n.network for n in machine.nics),
        node_selector=dict(machine.node_selector),
        only_nodes=frozenset(only_nodes) if only_nodes is not None else None,
        only_reason=only_reason,
        storage_backends=frozenset(d.backend for d in machine.disks if d.backend is not None),
    )


def usage_of(machine: machines.MachineSpec) -> Usage:
    """What a placed machine takes from its node."""
    return Usage(machine.cpu.cores, quantities.to_bytes(machine.memory), machine.gpus)


def cordoned(node_objects: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Names of the core/v1 Node objects marked unschedulable (``kubectl cordon``). A
    node with a Lease but no Node object is not cordoned."""
    return frozenset(
        str((n.get("metadata") or {}).get("name"))
        for n in node_objects
        if (n.get("spec") or {}).get("unschedulable") is True
    )


def node_from_lease(
    lease: Mapping[str, Any],
    *,
    now: datetime,
    cordoned: frozenset[str] = frozenset(),
    powered_off: frozenset[str] = frozenset(),
) -> Node:
    """A node from its agent's Lease (a raw API object), parsed with the node contract
    (``api/nodes``): ``node_of`` the parsed Lease."""
    return node_of(nodes.parse(lease), now=now, cordoned=cordoned, powered_off=powered_off)


def node_of(
    parsed: nodes.NodeLease,
    *,
    now: datetime,
    cordoned: frozenset[str] = frozenset(),
    powered_off: frozenset[str] = frozenset(),
) -> Node:
    """A node from its parsed Lease, as it stands at ``now``. A Lease whose
    ``renewTime + leaseDurationSeconds`` is past marks the node lost; a missing or
    unreadable capacity annotation leaves it with no capacity (nothing fits there).
    ``cordoned`` names the unschedulable Node objects, ``powered_off`` those marked for
    power-off (``rebalancepolicies.powered_off``). Split from the parsing so a burst of
    placements parses each Lease once per list (``reserving.Placer.nodes``), not once
    per VM: only liveness depends on ``now``."""
    capacity = parsed.capacity
    return Node(
        name=parsed.name,
        labels=parsed.labels,
        cpu=capacity.cpu,
        memory_bytes=capacity.memory_bytes,
        gpus=capacity.gpus,
        networks=frozenset(capacity.networks),
        shared_storage=capacity.shared_storage,
        storage_backends=frozenset(capacity.storage_backends),
        alive=parsed.alive(now),
        cordoned=parsed.name in cordoned,
        powered_off=parsed.name in powered_off,
    )


def _mem(n: int) -> str:
    """Bytes as a readable quantity: exact binary suffix, else MiB rounded down."""
    exact = quantities.format_bytes(max(n, 0))
    if not exact.isdigit() or n < 2**20:
        return exact
    return f"{n // 2**20}Mi"


def _labels(labels: Mapping[str, str]) -> str:
    """A node's labels as ``k=v, ...`` (sorted), or "none"."""
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"


def headroom(node: Node, used: Usage, *, cpu_overcommit: float = 1.0) -> Usage:
    """What ``node`` can still take: its capacity (CPU times ``cpu_overcommit``) minus
    ``used``; a part is negative when the node is overbooked. ``refusal`` and the
    rebalancing planner both measure fit with it."""
    return Usage(
        int(node.cpu * cpu_overcommit) - used.cpu,
        node.memory_bytes - used.memory_bytes,
        node.gpus - used.gpus,
    )


def refusal(node: Node, used: Usage, request: Request, *, cpu_overcommit: float = 1.0) -> str:
    """Why ``node`` cannot take ``request``, as a clause; empty when it can."""
    if request.only_nodes is not None and node.name not in request.only_nodes:
        return request.only_reason or "not allowed for this VM"
    if not node.alive:
        return "node lost (its Lease expired)"
    if node.cordoned:
        return "cordoned (its Node is unschedulable; kubevisor uncordon to allow it)"
    if node.powered_off:
        return "marked for power-off by consolidation (Node condition KubevisorPowerOff)"
    mismatched = sorted(
        f"{k}={v}" for k, v in request.node_selector.items() if node.labels.get(k) != v
    )
    if mismatched:
        return (
            f"does not match nodeSelector {', '.join(mismatched)} "
            f"(its labels: {_labels(node.labels)})"
        )
    room = headroom(node, used, cpu_overcommit=cpu_overcommit)
    if request.gpus:
        free = room.gpus
        if node.gpus == 0:
            return "lacks GPUs"
        if free < request.gpus:
            return f"not enough GPUs (need {request.gpus}, free {free})"
    missing = sorted(request.networks - node.networks)
    if missing:
        return f"lacks network{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    unreached = sorted(request.storage_backends - node.storage_backends)
    if unreached:
        plural = "s" if len(unreached) > 1 else ""
        return f"does not reach StorageBackend{plural} {', '.join(unreached)}"
    free_cpu = room.cpu
    if free_cpu < request.cpu:
        return f"not enough CPU (need {request.cpu}, free {max(free_cpu, 0)})"
    free_mem = room.memory_bytes
    if free_mem < request.memory_bytes:
        return (
            f"not enough memory (need {_mem(request.memory_bytes)}, free {_mem(max(free_mem, 0))})"
        )
    return ""


def place(
    request: Request,
    nodes: Iterable[Node],
    used: Mapping[str, Usage],
    *,
    cpu_overcommit: float = 1.0,
) -> Placement:
    """The node with the most free memory among those that fit (ties by name), or
    ``None`` with one clause per node saying why it was refused."""
    fitting: list[tuple[int, str]] = []
    refused: list[str] = []
    for node in sorted(nodes, key=lambda n: n.name):
        u = used.get(node.name, Usage())
        why = refusal(node, u, request, cpu_overcommit=cpu_overcommit)
        if why:
            refused.append(f"{node.name}: {why}")
        else:
            fitting.append((-(node.memory_bytes - u.memory_bytes), node.name))
    if fitting:
        best = min(fitting)[1]
        return Placement(best, f"placed on node {best}")
    if not refused:
        return Placement(None, "no nodes: no kubevisor agent has registered a Lease")
    return Placement(None, "no node fits: " + "; ".join(refused))
