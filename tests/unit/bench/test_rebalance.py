"""bench/rebalance.py's own arithmetic: the synthetic cluster, the lower bound, the FFD
baseline and the plan check that makes the script exit non-zero."""

from __future__ import annotations

import json

import pytest

from kubevisor.controller.placement import placing
from kubevisor.controller.placement import rebalancing as rb

from . import load

pytestmark = pytest.mark.unit

bench = load("rebalance")
GIB = 2**30


def test_synth_is_seeded_and_fits_every_node() -> None:
    a, b = bench.synth(10, 150, 3), bench.synth(10, 150, 3)
    assert a.guests == b.guests
    for h in a.hosts:
        mine = [g for g in a.guests if g.node == h.name]
        assert sum(g.usage.memory_bytes for g in mine) == h.used.memory_bytes <= bench.NODE_MEM
        assert sum(g.usage.cpu for g in mine) == h.used.cpu <= bench.NODE_CPU
    pinned = {g.node for g in a.guests if g.stay}
    assert pinned <= {"node-0000"}  # 5 % of 10 nodes, at least one


def small() -> object:
    hosts = [
        rb.Host(placing.Node(name=n, cpu=bench.NODE_CPU, memory_bytes=bench.NODE_MEM), u)
        for n, u in (("a", placing.Usage(2, 200 * GIB)), ("b", placing.Usage(1, 100 * GIB)))
    ]
    guests = [
        rb.Guest("ns/a1", "a", placing.Usage(1, 100 * GIB)),
        rb.Guest("ns/a2", "a", placing.Usage(1, 100 * GIB)),
        rb.Guest("ns/b1", "b", placing.Usage(1, 100 * GIB)),
    ]
    return bench.Cluster(hosts, guests)


def test_lower_bound_rounds_the_dominant_demand_up() -> None:
    assert bench.lower_bound(small()) == 2  # 300 GiB over 256 GiB nodes


def test_ffd_counts_moves_from_the_current_placement() -> None:
    # fullest node first: a keeps a1 and a2 (200 GiB), b1 fits nowhere else
    assert bench.ffd(small()) == {"freed": 0, "moves": 0, "bytes": 0}


def test_check_flags_overbooking_and_a_busy_node_marked_off() -> None:
    c = small()
    bad = rb.Plan((rb.Move("ns/b1", "b", "a", 100 * GIB),), "x", power_off=("a",))
    problems = bench.check(c, bad)
    assert any("overbooked" in p for p in problems)
    assert any("marked for power-off" in p for p in problems)
    assert bench.check(c, rb.Plan((), "nothing")) == []


def test_main_prints_one_json_line_last(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--sets", "100x2000", "--seed", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    data = json.loads(last)
    assert data["bench"] == "rebalance"
    assert set(data["targets"]) == {
        "within_one_node_of_lower_bound_100",
        "fewer_bytes_per_node_freed_than_ffd_100",
    }
    (result,) = data["results"]
    assert result["ours"]["nodes_used"] + result["ours"]["freed"] == 100
