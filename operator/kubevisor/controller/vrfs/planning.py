"""Cluster-level VRF decisions: node selection, conflicts, table allocation.

Pure functions over plain data. The API server's CEL rules check one object at a time;
what needs every VRF at once lives here:

- two VRFs with the same explicit table on overlapping node sets (``TableConflict``);
- two VRFs claiming the same segment (network + VLAN) or host interface on the same
  nodes (``InterfaceConflict``: one L2 segment in two VRFs leaks between them);
- a table for every VRF without ``spec.table``, unique among the accepted VRFs.

VRFs are considered in creation order, so the later-created VRF is always the refused
one and a running VRF never loses its table or segment to a newcomer. ``handlers``
gathers the objects and node Leases, calls `decide` and applies ``status.build_status``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubevisor.api import conditions, vrfs
from kubevisor.api.conditions import Reason
from kubevisor.controller.placement import placing

#: Where automatic allocation looks for a free table (the contract's range).
AUTO_TABLE_FIRST = vrfs.AUTO_TABLE_FIRST
AUTO_TABLE_LAST = vrfs.AUTO_TABLE_LAST
INTERFACE_CONFLICT = Reason.INTERFACE_CONFLICT
TABLES_EXHAUSTED = Reason.TABLES_EXHAUSTED
#: Reasons that mean "the controller refused this VRF": agents do not realize it.
REFUSALS = conditions.VRF_REFUSALS

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


def nodes_text(names: Iterable[str]) -> str:
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
                f"table {spec.table} is already used by {who} on {nodes_text(shared)};"
                " choose another table or leave spec.table empty to get one allocated.",
            )
        theirs = set(claims(other.spec)) if other.spec is not None else set()
        clash = next((c for c in wanted if c in theirs), None)
        if clash is not None:
            return (
                INTERFACE_CONFLICT,
                f"{clash[0]} {clash[1]!r} is already claimed by {who} on {nodes_text(shared)};"
                " one segment or interface belongs to one VRF per node.",
            )
    return None
