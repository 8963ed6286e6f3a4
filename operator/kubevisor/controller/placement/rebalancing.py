"""The rebalancing planner: which running VMs to move where, and which nodes to power
off or on, for the cluster's RebalancePolicy (docs/rebalancing.md).

Pure: ``plan(hosts, guests, policy) -> Plan``. The controller (``controller/rebalancing``)
builds the hosts and guests from the node Leases, Node objects, VMs and Migrations; what
a migration precondition would refuse is already folded into each guest (``stay``: it
never moves; ``targets``: the only nodes that may take it), so the planner only adds the
capacity rule, measured with ``placing.headroom`` like every placement.

Rules every mode keeps:

1. A guest with ``stay`` set never moves (pinned by nodeSelector, ``spec.rebalance:
   Never``, not Running, already migrating, or refused by every node's preconditions).
2. Only *eligible* hosts take part: alive, not cordoned, with capacity. A host powered
   off (marked by Consolidate) takes nothing.
3. Within one pass a host either gives or receives, never both, so the planned moves
   hold in any order and in parallel (each target has room for all it receives).
4. At most ``policy.maxMovesPerPass`` moves.
5. A move's cost is the bytes it is expected to send (:func:`move_cost`: the memory,
   more for a guest whose past migrations showed it dirtying memory fast).

Balance (DRS): utilization is a host's dominant share (the larger of used CPU over CPU
times the overcommit, and used memory over memory). While some host is further than
``balance.thresholdPercent`` points from the mean, the planner takes the move, from one
of the most loaded hosts to one of the least loaded, with the best gain per GiB of cost,
where the gain is how much the move shrinks the sum of squared deviations from the mean.
A move that gains nothing is never made, so it never overshoots or oscillates.

Consolidate (DPM): receivers are packed up to ``consolidate.targetUtilizationPercent``.
Hosts are emptied cheapest first (the bytes to move all their guests, then less used
memory, then name); a host is emptied only if *all* its guests fit elsewhere (best fit:
the receiver with the least memory left that still takes the guest, largest guest
first), otherwise nothing of it moves. A host already empty is marked for power-off at
once. Neither happens when the hosts left powered would together use more than the
target (one host always stays up): the wake rule would undo it, and a just-woken host
would flap. If the powered hosts use more than ``consolidate.wakeUtilizationPercent`` of their
capacity, nothing moves and powered-off hosts are woken (alive or not: a host that is
really off has no agent renewing its Lease), as many as bring it back to
the target (at least one). Off and Balance wake every powered-off host, and a
powered-off host that holds VMs anyway is woken first, whatever the mode.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from kubevisor.api import rebalancepolicies
from kubevisor.controller.placement import placing

Mode = rebalancepolicies.Mode
GIB: Final = 2**30
#: The most a fast-dirtying guest's move may cost, in multiples of its memory (pre-copy
#: that does not converge is stopped by auto-converge or post-copy around there).
MAX_COST_FACTOR: Final = 10.0
#: How many of the most and least loaded hosts Balance pairs per move.
BALANCE_WIDTH: Final = 6


@dataclass(frozen=True)
class Host:
    """A node as the planner sees it."""

    node: placing.Node
    used: placing.Usage
    """What the VMs placed there take (a migrating VM counts on both of its nodes)."""
    powered_off: bool = False
    """Marked for power-off by an earlier Consolidate pass."""

    @property
    def name(self) -> str:
        return self.node.name


@dataclass(frozen=True)
class Guest:
    """A running VM as the planner sees it."""

    key: str
    """``namespace/name``."""
    node: str
    usage: placing.Usage
    stay: str = ""
    """Why it never moves; empty when it may."""
    targets: frozenset[str] | None = None
    """The nodes whose migration preconditions (capacity aside) accept it; None: any."""
    dirty_rate_bytes_per_second: int | None = None
    """From its last migration's progress, when one was reported."""
    transfer_rate_bytes_per_second: int | None = None
    """From the same sample: how fast memory moved then."""

    @property
    def cost_bytes(self) -> int:
        return move_cost(
            self.usage.memory_bytes,
            dirty_rate=self.dirty_rate_bytes_per_second,
            transfer_rate=self.transfer_rate_bytes_per_second,
        )


@dataclass(frozen=True)
class Move:
    """Move ``vm`` from ``source`` to ``target``."""

    vm: str
    source: str
    target: str
    cost_bytes: int


@dataclass(frozen=True)
class Plan:
    """The answer: moves in the order planned, nodes to mark or wake, and a sentence."""

    moves: tuple[Move, ...]
    message: str
    power_off: tuple[str, ...] = ()
    """Hosts that hold (or after the moves will hold) no VM: mark them for power-off."""
    power_on: tuple[str, ...] = ()
    """Powered-off hosts to bring back."""
    stays: Mapping[str, str] = field(default_factory=dict)
    """Guests that never move, with the reason (``Guest.stay``)."""

    @property
    def cost_bytes(self) -> int:
        return sum(m.cost_bytes for m in self.moves)


def move_cost(memory_bytes: int, *, dirty_rate: int | None, transfer_rate: int | None) -> int:
    """Bytes a live migration of ``memory_bytes`` is expected to send: one copy of the
    memory, plus what the guest dirties meanwhile (pre-copy's geometric series,
    ``1 / (1 - dirty/transfer)``), at most :data:`MAX_COST_FACTOR` times the memory.
    Without both rates, the memory alone."""
    if not dirty_rate or not transfer_rate:
        return memory_bytes
    ratio = dirty_rate / transfer_rate
    factor = MAX_COST_FACTOR if ratio >= 1 else min(1 / (1 - ratio), MAX_COST_FACTOR)
    return int(memory_bytes * factor)


def utilization(host: Host, used: placing.Usage, *, cpu_overcommit: float = 1.0) -> float:
    """The dominant share of ``host`` that ``used`` takes (0.0 .. ≥1.0)."""
    cpu = host.node.cpu * cpu_overcommit
    shares = [used.cpu / cpu if cpu > 0 else 0.0]
    if host.node.memory_bytes > 0:
        shares.append(used.memory_bytes / host.node.memory_bytes)
    return max(shares)


def eligible(host: Host) -> bool:
    """Rule 2: alive, not cordoned, with capacity."""
    n = host.node
    return n.alive and not n.cordoned and n.cpu > 0 and n.memory_bytes > 0


def _fits(room: placing.Usage, need: placing.Usage) -> bool:
    return (
        room.cpu >= need.cpu and room.memory_bytes >= need.memory_bytes and (room.gpus >= need.gpus)
    )


def _accepts(guest: Guest, host: str) -> bool:
    return host != guest.node and (guest.targets is None or host in guest.targets)


def plan(
    hosts: Iterable[Host],
    guests: Iterable[Guest],
    policy: rebalancepolicies.RebalancePolicySpec,
    *,
    cpu_overcommit: float = 1.0,
) -> Plan:
    """The plan for one pass (rules in the module docstring)."""
    hosts = sorted(hosts, key=lambda h: h.name)
    guests = sorted(guests, key=lambda g: g.key)
    stays = {g.key: g.stay for g in guests if g.stay}
    off = [h.name for h in hosts if h.powered_off]
    busy = tuple(h.name for h in hosts if h.powered_off and h.used != placing.Usage())
    if busy:  # something landed on a powered-off node: bring it back before anything else
        return Plan(
            (),
            f"powered-off node(s) {', '.join(busy)} hold VMs: waking them",
            power_on=busy,
            stays=stays,
        )
    if policy.mode is Mode.CONSOLIDATE:
        return _consolidate(hosts, guests, policy, cpu_overcommit=cpu_overcommit, stays=stays)
    wake = tuple(off)
    woken = f"; waking {len(wake)} powered-off node(s)" if wake else ""
    if policy.mode is Mode.OFF:
        return Plan((), "mode is Off: nothing moves" + woken, power_on=wake, stays=stays)
    moves, message = _balance(hosts, guests, policy, cpu_overcommit=cpu_overcommit)
    return Plan(moves, message + woken, power_on=wake, stays=stays)


# --- Balance --------------------------------------------------------------------------


def _balance(
    hosts: list[Host],
    guests: list[Guest],
    policy: rebalancepolicies.RebalancePolicySpec,
    *,
    cpu_overcommit: float,
) -> tuple[tuple[Move, ...], str]:
    active = {h.name: h for h in hosts if eligible(h) and not h.powered_off}
    if len(active) < 2:
        return (), f"{len(active)} eligible node(s): nothing to balance"
    used = {name: h.used for name, h in active.items()}
    on: dict[str, list[Guest]] = defaultdict(list)
    for g in guests:
        if not g.stay and g.node in active:
            on[g.node].append(g)
    band = policy.balance.threshold_percent / 100
    gave: set[str] = set()
    received: set[str] = set()
    moved: set[str] = set()
    moves: list[Move] = []

    def util(name: str, u: placing.Usage | None = None) -> float:
        return utilization(
            active[name], used[name] if u is None else u, cpu_overcommit=cpu_overcommit
        )

    while True:
        utils = {n: util(n) for n in active}
        mean = sum(utils.values()) / len(utils)
        spread = max(abs(u - mean) for u in utils.values())
        if spread <= band:
            return tuple(moves), (
                f"balanced: every node within {policy.balance.threshold_percent} points of "
                f"the mean {mean:.0%}" + (f" after {len(moves)} move(s)" if moves else "")
            )
        if len(moves) >= policy.max_moves_per_pass:
            return tuple(moves), (
                f"move budget of {policy.max_moves_per_pass} spent; a node is still "
                f"{spread:.0%} from the mean {mean:.0%}"
            )
        ranked = sorted(utils, key=lambda n: (utils[n], n))
        sources = [n for n in reversed(ranked) if utils[n] > mean and n not in received]
        targets = [n for n in ranked if utils[n] < mean and n not in gave]
        best: tuple[float, Move, placing.Usage, placing.Usage] | None = None
        for s in sources[:BALANCE_WIDTH]:
            for g in on[s]:
                if g.key in moved:
                    continue
                s_after = used[s] + placing.Usage(
                    -g.usage.cpu, -g.usage.memory_bytes, -g.usage.gpus
                )
                for d in targets[:BALANCE_WIDTH]:
                    room = placing.headroom(active[d].node, used[d], cpu_overcommit=cpu_overcommit)
                    if not _accepts(g, d) or not _fits(room, g.usage):
                        continue
                    d_after = used[d] + g.usage
                    before = (utils[s] - mean) ** 2 + (utils[d] - mean) ** 2
                    after = (util(s, s_after) - mean) ** 2 + (util(d, d_after) - mean) ** 2
                    gain = before - after
                    if gain <= 1e-12:
                        continue
                    cost = g.cost_bytes
                    score = gain / max(cost / GIB, 1e-3)
                    if best is None or score > best[0]:
                        best = (score, Move(g.key, s, d, cost), s_after, d_after)
        if best is None:
            return tuple(moves), (
                f"a node is {spread:.0%} from the mean {mean:.0%} but no move narrows it "
                "(pinned VMs, preconditions or capacity)"
            )
        _, move, s_after, d_after = best
        used[move.source], used[move.target] = s_after, d_after
        gave.add(move.source)
        received.add(move.target)
        moved.add(move.vm)
        moves.append(move)


# --- Consolidate ----------------------------------------------------------------------


class _Receivers:
    """Receiving hosts indexed by the memory they have left under the ceiling, for best
    fit in O(log n) plus a short scan."""

    def __init__(self, room: dict[str, placing.Usage]) -> None:
        self.room = room
        self._keys = sorted((r.memory_bytes, n) for n, r in room.items())

    def remove(self, name: str) -> None:
        key = (self.room[name].memory_bytes, name)
        i = bisect.bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            del self._keys[i]

    def add(self, name: str) -> None:
        bisect.insort(self._keys, (self.room[name].memory_bytes, name))

    def take(self, name: str, usage: placing.Usage, sign: int) -> None:
        self.remove(name)
        r = self.room[name]
        self.room[name] = placing.Usage(
            r.cpu - sign * usage.cpu,
            r.memory_bytes - sign * usage.memory_bytes,
            r.gpus - sign * usage.gpus,
        )
        self.add(name)

    def best_fit(self, guest: Guest) -> str | None:
        """The receiver with the least memory left that takes ``guest``."""
        i = bisect.bisect_left(self._keys, (guest.usage.memory_bytes, ""))
        for _, name in self._keys[i:]:
            if _accepts(guest, name) and _fits(self.room[name], guest.usage):
                return name
        return None


def _consolidate(
    hosts: list[Host],
    guests: list[Guest],
    policy: rebalancepolicies.RebalancePolicySpec,
    *,
    cpu_overcommit: float,
    stays: Mapping[str, str],
) -> Plan:
    spec = policy.consolidate
    active = [h for h in eligible_hosts(hosts) if not h.powered_off]
    # a powered-off host's agent may be down too (its Lease lapses): still wakeable
    sleeping = [h for h in hosts if h.powered_off and h.node.cpu > 0 and h.node.memory_bytes > 0]
    wake = _to_wake(active, sleeping, spec, cpu_overcommit=cpu_overcommit)
    if wake:
        return Plan(
            (),
            f"powered nodes use more than {spec.wake_utilization_percent}% of their capacity: "
            f"waking {', '.join(wake)}",
            power_on=wake,
            stays=stays,
        )
    ceiling = spec.target_utilization_percent / 100
    on: dict[str, list[Guest]] = defaultdict(list)
    for g in guests:
        on[g.node].append(g)
    room = {
        h.name: placing.Usage(
            math.floor(h.node.cpu * cpu_overcommit * ceiling) - h.used.cpu,
            math.floor(h.node.memory_bytes * ceiling) - h.used.memory_bytes,
            h.node.gpus - h.used.gpus,
        )
        for h in active
    }
    receivers = _Receivers(room)
    # Empty hosts are powered off while the rest stay within the target (else the wake
    # rule would bring one straight back: a woken host would flap), one host always up.
    empty = [h for h in active if not on[h.name] and h.used == placing.Usage()]
    staying = list(active)
    used = _total(active)
    already_empty: list[str] = []
    for h in sorted(empty, key=lambda h: (h.node.memory_bytes, h.name)):
        rest = [x for x in staying if x is not h]
        if rest and _share(rest, used, cpu_overcommit=cpu_overcommit) <= ceiling:
            staying = rest
            already_empty.append(h.name)
            receivers.remove(h.name)  # an empty node is powered off, not filled
    candidates = sorted(
        (h for h in active if on[h.name] and all(not g.stay for g in on[h.name])),
        key=lambda h: (sum(g.cost_bytes for g in on[h.name]), h.used.memory_bytes, h.name),
    )
    received: set[str] = set()
    freed: list[str] = []
    moves: list[Move] = []
    budget = policy.max_moves_per_pass
    for host in candidates:
        mine = sorted(on[host.name], key=lambda g: (-g.usage.memory_bytes, -g.usage.cpu, g.key))
        if host.name in received or len(moves) + len(mine) > budget:
            continue
        rest = [x for x in staying if x is not host]
        if _share(rest, used, cpu_overcommit=cpu_overcommit) > ceiling:
            continue  # the others together would pass the target: waking would undo it
        receivers.remove(host.name)
        tentative: list[tuple[Guest, str]] = []
        for g in mine:
            target = receivers.best_fit(g)
            if target is None:
                break
            receivers.take(target, g.usage, +1)
            tentative.append((g, target))
        if len(tentative) < len(mine):
            for g, target in tentative:
                receivers.take(target, g.usage, -1)
            receivers.add(host.name)
            continue
        freed.append(host.name)
        staying = rest
        for g, target in tentative:
            received.add(target)
            moves.append(Move(g.key, host.name, target, g.cost_bytes))
    power_off = tuple(already_empty + freed) if spec.power_off else ()
    kept = len(active) - len(already_empty) - len(freed)
    message = (
        f"{len(moves)} move(s) free {len(freed)} node(s)"
        + (f", {len(already_empty)} already empty" if already_empty else "")
        + f"; {kept} node(s) stay powered, packed to at most "
        f"{spec.target_utilization_percent}%"
    )
    return Plan(tuple(moves), message, power_off=power_off, stays=stays)


def _total(group: Iterable[Host]) -> placing.Usage:
    out = placing.Usage()
    for h in group:
        out = out + h.used
    return out


def _share(group: list[Host], used: placing.Usage, *, cpu_overcommit: float) -> float:
    """The dominant share ``used`` takes of the hosts in ``group`` together."""
    cpu = sum(h.node.cpu for h in group) * cpu_overcommit
    mem = sum(h.node.memory_bytes for h in group)
    if cpu <= 0 or mem <= 0:
        return math.inf
    return max(used.cpu / cpu, used.memory_bytes / mem)


def eligible_hosts(hosts: Iterable[Host]) -> list[Host]:
    """The hosts that take part (rule 2), by name."""
    return sorted((h for h in hosts if eligible(h)), key=lambda h: h.name)


def _to_wake(
    active: list[Host],
    sleeping: list[Host],
    spec: rebalancepolicies.ConsolidateSpec,
    *,
    cpu_overcommit: float,
) -> tuple[str, ...]:
    """Powered-off hosts to wake: none while the powered hosts' aggregate dominant share
    is at most the wake threshold; else, largest first, as many as bring it to the
    target (at least one)."""
    if not sleeping:
        return ()

    used = _total(active)

    def share(group: list[Host]) -> float:
        return _share(group, used, cpu_overcommit=cpu_overcommit)

    if active and share(active) <= spec.wake_utilization_percent / 100:
        return ()
    order = sorted(sleeping, key=lambda h: (-h.node.memory_bytes, h.name))
    woken: list[Host] = []
    for h in order:
        woken.append(h)
        if share(active + woken) <= spec.target_utilization_percent / 100:
            break
    return tuple(h.name for h in woken)
