"""Cluster-level VRF decisions: node selection, conflicts, table allocation, status.

Pure functions over plain data. The API server's CEL rules check one object at a time;
what needs every VRF at once lives here:

- two VRFs with the same explicit table on overlapping node sets (``TableConflict``);
- two VRFs claiming the same segment (network + VLAN) or host interface on the same
  nodes (``InterfaceConflict``: one L2 segment in two VRFs leaks between them);
- a table for every VRF without ``spec.table``, unique among the accepted VRFs.

VRFs are considered in creation order, so the later-created VRF is always the refused
one and a running VRF never loses its table or segment to a newcomer. The handler
(``handlers``) gathers the objects and node Leases, calls `decide` and applies `build_status`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubevisor.api import conditions, vrfs
from kubevisor.api.conditions import ConditionType, Reason
from kubevisor.controller.placement import placing

#: Where automatic allocation looks for a free table (the contract's range).
AUTO_TABLE_FIRST = vrfs.AUTO_TABLE_FIRST
AUTO_TABLE_LAST = vrfs.AUTO_TABLE_LAST
INTERFACE_CONFLICT = Reason.INTERFACE_CONFLICT
TABLES_EXHAUSTED = Reason.TABLES_EXHAUSTED
#: Reasons that mean "the controller refused this VRF": agents do not realize it.
REFUSALS = conditions.VRF_REFUSALS
OWNED_CONDITIONS = (ConditionType.READY, ConditionType.SCHEDULED)
OWNED_FIELDS = ("phase", "readyNodes", "tableAllocated", "observedGeneration")

Key = tuple[str, str]


@dataclass(frozen=True)
class Item:
    """One VRF object as the decisions need it (raw wire form in, parsed spec)."""

    namespace: str
    name: str
    created: str
    generation: int
    spec: vrfs.VRFSpec | None
    """None when the stored spec does not parse (refused as InvalidSpec)."""
    status: Mapping[str, Any] = field(default_factory=dict)
    parse_error: str = ""

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)


def item_from(obj: Mapping[str, Any]) -> Item:
    """An `Item` from a raw VRF object, its spec parsed as the agents parse it."""
    meta = obj.get("metadata") or {}
    spec: vrfs.VRFSpec | None = None
    error = ""
    try:
        spec = vrfs.parse_spec(obj)
    except vrfs.InvalidVRF as exc:
        error = str(exc)
    return Item(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        created=str(meta.get("creationTimestamp") or ""),
        generation=int(meta.get("generation") or 0),
        spec=spec,
        status=dict(obj.get("status") or {}),
        parse_error=error,
    )


@dataclass(frozen=True)
class Decision:
    """What the controller decided for one VRF."""

    nodes: tuple[str, ...]
    """Selected nodes (live Leases matching nodeSelector), sorted."""
    table: int | None
    """The VRF's table: spec.table or the allocated one; None when refused."""
    allocated: bool = False
    """Whether ``table`` was allocated (spec.table absent)."""
    reason: str = ""
    """Refusal reason; empty when accepted."""
    message: str = ""


def selected_nodes(selector: Mapping[str, str], nodes: Iterable[placing.Node]) -> tuple[str, ...]:
    """Live nodes whose labels match ``selector`` (empty selects every node), by the
    function each agent uses to decide whether it is selected."""
    return tuple(sorted(n.name for n in nodes if n.alive and vrfs.selects_node(selector, n.labels)))


def claims(spec: vrfs.VRFSpec) -> list[tuple[str, str]]:
    """What a VRF takes exclusively on each of its nodes: segments and host interfaces."""
    out = []
    for iface in spec.interfaces:
        if iface.host_interface is not None:
            out.append(("host interface", iface.host_interface))
        elif iface.network is not None:
            seg = iface.network if iface.vlan is None else f"{iface.network}/vlan {iface.vlan}"
            out.append(("segment", seg))
    return out


def _nodes_text(names: Iterable[str]) -> str:
    listed = sorted(names)
    return f"node{'s' if len(listed) > 1 else ''} {', '.join(listed)}"


def _order(items: Iterable[Item]) -> list[Item]:
    """Oldest first, so the later-created VRF is the one refused.

    RFC 3339 timestamps of one API server sort as text, but only to the second: two VRFs
    created in the same second tie, and then the one accepted before (it holds
    ``status.tableAllocated``) must stay first, or a newcomer whose name sorts earlier
    would take its table away. Remaining ties by namespace/name.
    """

    def key(i: Item) -> tuple[str, bool, str, str]:
        incumbent = isinstance(i.status.get("tableAllocated"), int)
        return (i.created, not incumbent, i.namespace, i.name)

    return sorted(items, key=key)


def decide(
    items: Sequence[Item],
    nodes: Sequence[placing.Node],
    *,
    first: int = AUTO_TABLE_FIRST,
    last: int = AUTO_TABLE_LAST,
) -> dict[Key, Decision]:
    """Decide every VRF at once (all namespaces: tables and segments are per node).

    Explicit tables conflict only where node sets overlap (a table is unique per node);
    allocated tables are unique among all accepted VRFs, and a VRF keeps the table it
    was allocated before (``status.tableAllocated``) while nobody earlier holds it; new
    allocations avoid tables other VRFs hold, so an older VRF accepted late does not move
    a running one.
    """
    accepted: list[tuple[Item, Decision]] = []
    used: set[int] = set()
    held = {t for t in (_held(i) for i in items) if t is not None}
    out: dict[Key, Decision] = {}
    for item in _order(items):
        spec = item.spec
        if spec is None:
            out[item.key] = Decision(
                (), None, reason=Reason.INVALID_SPEC, message=f"spec is invalid: {item.parse_error}"
            )
            continue
        mine = selected_nodes(spec.node_selector, nodes)
        problem = _conflict(item, spec, mine, accepted)
        if problem is not None:
            out[item.key] = Decision(mine, None, reason=problem[0], message=problem[1])
            continue
        table = spec.table
        allocated = False
        if table is None:
            allocated = True
            previous = _held(item)
            if previous is not None and previous not in used:
                table = previous
            else:
                free = [
                    t
                    for t in range(first, last + 1)
                    if t not in used and t not in vrfs.RESERVED_TABLES
                ]
                # a newcomer takes a table nobody holds, so no realized VRF has to move
                table = next((t for t in free if t not in held), next(iter(free), None))
            if table is None:
                out[item.key] = Decision(
                    mine,
                    None,
                    reason=TABLES_EXHAUSTED,
                    message=f"no free routing table in {first}..{last}; set spec.table.",
                )
                continue
        decision = Decision(mine, table, allocated=allocated)
        used.add(table)
        accepted.append((item, decision))
        out[item.key] = decision
    return out


def _held(item: Item) -> int | None:
    """The table the controller allocated to this VRF before, if any."""
    previous = item.status.get("tableAllocated")
    return previous if isinstance(previous, int) and previous > 0 else None


def _conflict(
    item: Item,
    spec: vrfs.VRFSpec,
    mine: tuple[str, ...],
    accepted: Sequence[tuple[Item, Decision]],
) -> tuple[str, str] | None:
    wanted = claims(spec)
    for other, decision in accepted:
        shared = set(mine) & set(decision.nodes)
        if not shared:
            continue
        who = f"VRF {other.namespace}/{other.name}"
        if spec.table is not None and spec.table == decision.table:
            return (
                Reason.TABLE_CONFLICT,
                f"table {spec.table} is already used by {who} on {_nodes_text(shared)};"
                " choose another table or leave spec.table empty to get one allocated.",
            )
        theirs = set(claims(other.spec)) if other.spec is not None else set()
        clash = next((c for c in wanted if c in theirs), None)
        if clash is not None:
            return (
                INTERFACE_CONFLICT,
                f"{clash[0]} {clash[1]!r} is already claimed by {who} on {_nodes_text(shared)};"
                " one segment or interface belongs to one VRF per node.",
            )
    return None


# -- status -----------------------------------------------------------------------------


def _entry_reason(entry: Mapping[str, Any]) -> tuple[str, str]:
    """(reason, sentence) from an agent's node entry (its ``reason`` and ``message``)."""
    reason = entry.get("reason") or Reason.NODE_NOT_READY
    return str(reason), str(entry.get("message") or "not ready")


def build_status(item: Item, decision: Decision, *, now: datetime) -> dict[str, Any]:
    """The fields the controller owns, from its decision and the agents' node entries.

    A node counts as ready when its entry says ``ready`` for the current generation.
    """
    current = dict(item.status)
    listed: list[dict[str, Any]] = list(current.get("conditions") or [])
    gen = item.generation
    entries: Mapping[str, Any] = current.get("nodes") or {}

    def cond(type_: str, status: conditions.ConditionStatus, reason: str, message: str) -> None:
        nonlocal listed
        listed = conditions.set_condition(
            listed,
            type=type_,
            status=status,
            reason=reason,
            message=message,
            generation=gen,
            now=now,
        )

    ready = [
        n
        for n in decision.nodes
        if (entries.get(n) or {}).get("ready") is True
        and (entries.get(n) or {}).get("observedGeneration") == gen
    ]
    total = len(decision.nodes)
    out: dict[str, Any] = {"observedGeneration": gen, "readyNodes": f"{len(ready)}/{total}"}
    if decision.reason:
        phase = vrfs.VRFPhase.FAILED
        cond(ConditionType.READY, "False", decision.reason, decision.message)
        cond(ConditionType.SCHEDULED, "False", decision.reason, decision.message)
    elif total == 0:
        phase = vrfs.VRFPhase.PENDING
        msg = "no node matches nodeSelector (nodes come from live agent Leases)."
        cond(ConditionType.READY, "False", Reason.UNSCHEDULABLE, msg)
        cond(ConditionType.SCHEDULED, "False", Reason.UNSCHEDULABLE, msg)
    else:
        cond(
            ConditionType.SCHEDULED,
            "True",
            Reason.SCHEDULED,
            f"selected {_nodes_text(decision.nodes)}.",
        )
        failing = [
            (n, _entry_reason(entries[n]))
            for n in decision.nodes
            if n not in ready
            and (entries.get(n) or {}).get("observedGeneration") == gen
            and (entries.get(n) or {}).get("ready") is False
        ]
        if len(ready) == total:
            phase = vrfs.VRFPhase.READY
            cond(
                ConditionType.READY,
                "True",
                Reason.AS_EXPECTED,
                f"realized on {len(ready)}/{total} nodes.",
            )
        elif failing:
            phase = vrfs.VRFPhase.DEGRADED
            text = "; ".join(f"{n}: {r[1]}" for n, r in failing)
            cond(
                ConditionType.READY,
                "False",
                failing[0][1][0],
                f"{len(ready)}/{total} ready; {text}",
            )
        else:
            phase = vrfs.VRFPhase.PROVISIONING
            waiting = [n for n in decision.nodes if n not in ready]
            cond(
                ConditionType.READY,
                "False",
                Reason.IN_PROGRESS,
                f"waiting for {_nodes_text(waiting)} to report.",
            )
    out["phase"] = str(phase)
    if decision.table is not None:
        out["tableAllocated"] = decision.table
    out["conditions"] = [c for c in listed if c.get("type") in OWNED_CONDITIONS]
    return out


def owned_view(current: Mapping[str, Any]) -> dict[str, Any]:
    """Our fields as they stand in an object's status, shaped like `build_status`."""
    out = {k: current[k] for k in OWNED_FIELDS if current.get(k) is not None}
    out["conditions"] = [
        dict(c) for c in current.get("conditions") or [] if c.get("type") in OWNED_CONDITIONS
    ]
    return out


def same(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """True when applying ``wanted`` would change nothing we own."""
    return owned_view(current) == dict(wanted)
