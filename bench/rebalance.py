"""The rebalancing planner at scale (issue 14): Consolidate on synthetic clusters.

Two seeded synthetic clusters (100 nodes x 2,000 VMs and 1,000 x 20,000; nodes of 128
CPUs and 256 GiB; VMs of mixed sizes from 1 CPU / 2 GiB to 16 CPUs / 64 GiB, placed at
random; 2 % pinned by a nodeSelector on the first 5 % of nodes; 20 % carry a dirty rate
from a past migration). For each, the planner (``controller/placement/rebalancing.plan``,
mode Consolidate, target utilization 100 %, move budget unlimited) against two
references computed in the same run:

- the lower bound: total demand / node capacity, rounded up, in the dominant resource
  (no packing can use fewer nodes);
- first-fit-decreasing from scratch (FFD): every movable VM, largest memory first, into
  the first node that fits, nodes taken fullest first (pinned VMs stay where they are);
  a VM whose FFD node differs from its current one is a move.

Reported: planning time, nodes freed (ours, FFD, the best possible = nodes - lower
bound), moves and bytes moved (the planner's cost: memory, more for fast-dirtying
guests), and bytes per node freed. Targets (reported, not asserted): within one node of
the lower bound on the 100-node set; fewer bytes per node freed than FFD; the 1,000-node
set planned in under 10 s.

Pure Python, no cluster: ``.venv/bin/python bench/rebalance.py [--seed 14] [--sets
100x2000,1000x20000] [--json-only]``. Exits non-zero when a plan is wrong (a move onto a
node without room, a pinned VM moved, a freed node still holding a VM).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from kubevisor.api import rebalancepolicies
from kubevisor.controller.placement import placing, rebalancing

GIB = 2**30
NODE_CPU = 128
NODE_MEM = 256 * GIB
#: (cpu, GiB, weight): the VM size mix.
SIZES = (
    (1, 2, 25),
    (2, 4, 25),
    (2, 8, 15),
    (4, 8, 15),
    (4, 16, 10),
    (8, 16, 5),
    (8, 32, 4),
    (16, 64, 1),
)
PINNED_SHARE = 0.02
PINNED_NODES_SHARE = 0.05
DIRTY_SHARE = 0.2
TARGET_SECONDS_LARGE = 10.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Cluster:
    hosts: list[rebalancing.Host]
    guests: list[rebalancing.Guest]


def synth(n_nodes: int, n_vms: int, seed: int) -> Cluster:
    """A seeded random cluster: each VM on a random node with room (tries 50 nodes)."""
    rng = random.Random(seed)
    names = [f"node-{i:04d}" for i in range(n_nodes)]
    pinned_nodes = names[: max(1, int(n_nodes * PINNED_NODES_SHARE))]
    used = {n: [0, 0] for n in names}
    guests: list[rebalancing.Guest] = []
    weights = [w for _, _, w in SIZES]
    for i in range(n_vms):
        cpu, gib, _ = rng.choices(SIZES, weights)[0]
        mem = gib * GIB
        pinned = rng.random() < PINNED_SHARE
        pool = pinned_nodes if pinned else names
        node = None
        for _ in range(50):
            cand = rng.choice(pool)
            if used[cand][0] + cpu <= NODE_CPU and used[cand][1] + mem <= NODE_MEM:
                node = cand
                break
        if node is None:
            continue
        used[node][0] += cpu
        used[node][1] += mem
        dirty = transfer = None
        if rng.random() < DIRTY_SHARE:
            transfer = 1 * GIB
            dirty = int(transfer * rng.uniform(0.1, 1.2))
        guests.append(
            rebalancing.Guest(
                key=f"default/vm-{i:05d}",
                node=node,
                usage=placing.Usage(cpu, mem, 0),
                stay="pinned by nodeSelector" if pinned else "",
                targets=frozenset([node]) if pinned else None,
                dirty_rate_bytes_per_second=dirty,
                transfer_rate_bytes_per_second=transfer,
            )
        )
    hosts = [
        rebalancing.Host(
            node=placing.Node(name=n, cpu=NODE_CPU, memory_bytes=NODE_MEM),
            used=placing.Usage(used[n][0], used[n][1], 0),
        )
        for n in names
    ]
    return Cluster(hosts, guests)


def lower_bound(c: Cluster) -> int:
    cpu = sum(g.usage.cpu for g in c.guests)
    mem = sum(g.usage.memory_bytes for g in c.guests)
    return max(math.ceil(cpu / NODE_CPU), math.ceil(mem / NODE_MEM))


def ffd(c: Cluster) -> dict[str, Any]:
    """First-fit-decreasing from scratch (pinned VMs stay; nodes fullest first)."""
    used = {h.name: [0, 0] for h in c.hosts}
    for g in c.guests:
        if g.stay:
            used[g.node][0] += g.usage.cpu
            used[g.node][1] += g.usage.memory_bytes
    order = sorted(c.hosts, key=lambda h: (-h.used.memory_bytes, h.name))
    bins = [h.name for h in order]
    movable = sorted(
        (g for g in c.guests if not g.stay),
        key=lambda g: (-g.usage.memory_bytes, -g.usage.cpu, g.key),
    )
    moves = 0
    moved_bytes = 0
    first_open = 0
    for g in movable:
        while first_open < len(bins) and used[bins[first_open]][1] >= NODE_MEM - 2 * GIB:
            first_open += 1
        for name in bins[first_open:]:
            u = used[name]
            if u[0] + g.usage.cpu <= NODE_CPU and u[1] + g.usage.memory_bytes <= NODE_MEM:
                u[0] += g.usage.cpu
                u[1] += g.usage.memory_bytes
                if name != g.node:
                    moves += 1
                    moved_bytes += g.cost_bytes
                break
        else:
            raise RuntimeError(f"FFD found no node for {g.key}")
    freed = sum(1 for u in used.values() if u == [0, 0])
    return {"freed": freed, "moves": moves, "bytes": moved_bytes}


def check(c: Cluster, plan: rebalancing.Plan) -> list[str]:
    """What is wrong with ``plan``: overbooked targets, pinned moves, freed nodes not empty."""
    problems: list[str] = []
    by_key = {g.key: g for g in c.guests}
    used = {h.name: [h.used.cpu, h.used.memory_bytes] for h in c.hosts}
    where = {g.key: g.node for g in c.guests}
    for m in plan.moves:
        g = by_key[m.vm]
        if g.stay:
            problems.append(f"pinned {m.vm} moved")
        used[m.source][0] -= g.usage.cpu
        used[m.source][1] -= g.usage.memory_bytes
        used[m.target][0] += g.usage.cpu
        used[m.target][1] += g.usage.memory_bytes
        where[m.vm] = m.target
    for name, (cpu, mem) in used.items():
        if cpu > NODE_CPU or mem > NODE_MEM:
            problems.append(f"{name} overbooked: {cpu} CPUs, {mem / GIB:.0f} GiB")
    holding = defaultdict(int)
    for node in where.values():
        holding[node] += 1
    for name in plan.power_off:
        if holding[name]:
            problems.append(f"{name} marked for power-off but holds {holding[name]} VMs")
    return problems


def run_set(n_nodes: int, n_vms: int, seed: int) -> dict[str, Any]:
    c = synth(n_nodes, n_vms, seed)
    policy = rebalancepolicies.RebalancePolicySpec.model_validate(
        {
            "mode": "Consolidate",
            "maxMovesPerPass": 100_000,
            "consolidate": {"targetUtilizationPercent": 100, "wakeUtilizationPercent": 100},
        }
    )
    log(f"{n_nodes}x{n_vms}: planning ...")
    t0 = time.perf_counter()
    plan = rebalancing.plan(c.hosts, c.guests, policy)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = ffd(c)
    ffd_seconds = time.perf_counter() - t0
    problems = check(c, plan)
    lb = lower_bound(c)
    freed = len(plan.power_off)
    best = n_nodes - lb
    ours_bpn = plan.cost_bytes / freed if freed else None
    ffd_bpn = base["bytes"] / base["freed"] if base["freed"] else None
    return {
        "set": f"{n_nodes}x{len(c.guests)}",
        "nodes": n_nodes,
        "vms": len(c.guests),
        "lower_bound_nodes": lb,
        "best_possible_freed": best,
        "plan_seconds": round(seconds, 3),
        "ours": {
            "freed": freed,
            "nodes_used": n_nodes - freed,
            "moves": len(plan.moves),
            "bytes": plan.cost_bytes,
            "bytes_per_node_freed": ours_bpn,
            "moves_per_node_freed": len(plan.moves) / freed if freed else None,
        },
        "ffd": {
            **base,
            "nodes_used": n_nodes - base["freed"],
            "seconds": round(ffd_seconds, 3),
            "bytes_per_node_freed": ffd_bpn,
            "moves_per_node_freed": base["moves"] / base["freed"] if base["freed"] else None,
        },
        "problems": problems,
    }


def _gib(b: float | None) -> str:
    return "-" if b is None else f"{b / GIB:,.0f} GiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--sets", default="100x2000,1000x20000")
    ap.add_argument("--json-only", action="store_true")
    args = ap.parse_args(argv)
    results = []
    for spec in args.sets.split(","):
        n, v = (int(x) for x in spec.lower().split("x"))
        results.append(run_set(n, v, args.seed))
    targets: dict[str, Any] = {}
    for r in results:
        o, f = r["ours"], r["ffd"]
        if r["nodes"] == 100:
            targets["within_one_node_of_lower_bound_100"] = {
                "value": r["lower_bound_nodes"] + 1 - o["nodes_used"] >= 0,
                "nodes_used": o["nodes_used"],
                "lower_bound": r["lower_bound_nodes"],
            }
        targets[f"fewer_bytes_per_node_freed_than_ffd_{r['nodes']}"] = {
            "value": (o["bytes_per_node_freed"] or math.inf)
            < (f["bytes_per_node_freed"] or math.inf),
            "ours": o["bytes_per_node_freed"],
            "ffd": f["bytes_per_node_freed"],
        }
        if r["nodes"] == 1000:
            targets["plan_1000_under_10s"] = {
                "value": r["plan_seconds"] < TARGET_SECONDS_LARGE,
                "seconds": r["plan_seconds"],
            }
    if not args.json_only:
        head = (
            f"{'set':<12} {'who':<5} {'nodes used':>10} {'LB':>4} {'freed':>6} {'moves':>6} "
            f"{'bytes moved':>13} {'bytes/freed':>12} {'moves/freed':>11} {'plan s':>7}"
        )
        print(head)
        print("-" * len(head))
        for r in results:
            for who, d, secs in (
                ("ours", r["ours"], r["plan_seconds"]),
                ("ffd", r["ffd"], r["ffd"]["seconds"]),
            ):
                mpf = d["moves_per_node_freed"]
                print(
                    f"{r['set']:<12} {who:<5} {d['nodes_used']:>10} {r['lower_bound_nodes']:>4} "
                    f"{d['freed']:>6} {d['moves']:>6} {_gib(d['bytes']):>13} "
                    f"{_gib(d['bytes_per_node_freed']):>12} "
                    f"{'-' if mpf is None else f'{mpf:.1f}':>11} {secs:>7.2f}"
                )
        for name, t in targets.items():
            print(f"target {name}: {'met' if t['value'] else 'MISSED'}")
    print(
        json.dumps(
            {"bench": "rebalance", "seed": args.seed, "results": results, "targets": targets}
        )
    )
    bad = [p for r in results for p in r["problems"]]
    for p in bad[:20]:
        log(f"WRONG: {p}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
