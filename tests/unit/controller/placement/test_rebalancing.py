"""The rebalancing planner's rules (controller/placement/rebalancing), one table each."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.api import rebalancepolicies
from kubevisor.controller.placement import placing
from kubevisor.controller.placement import rebalancing as rb

pytestmark = pytest.mark.unit

GIB = 2**30


def host(name: str, cpu_used: int = 0, mem_gib: int = 0, **node: Any) -> rb.Host:
    off = node.pop("powered_off", False)
    args: dict[str, Any] = {"cpu": 16, "memory_bytes": 16 * GIB, **node}
    return rb.Host(
        placing.Node(name=name, **args),
        placing.Usage(cpu_used, mem_gib * GIB, 0),
        powered_off=off,
    )


def guest(key: str, node: str, mem_gib: int = 2, cpu: int = 1, **kw: Any) -> rb.Guest:
    return rb.Guest(key=key, node=node, usage=placing.Usage(cpu, mem_gib * GIB, 0), **kw)


def cluster(layout: dict[str, list[int]], **node: Any) -> tuple[list[rb.Host], list[rb.Guest]]:
    """Hosts named by ``layout``; each holds guests of the listed GiB (1 CPU each)."""
    hosts, guests = [], []
    for name, sizes in layout.items():
        hosts.append(host(name, len(sizes), sum(sizes), **node))
        guests += [guest(f"ns/{name}-{i}", name, s) for i, s in enumerate(sizes)]
    return hosts, guests


def policy(mode: str = "Balance", **spec: Any) -> rebalancepolicies.RebalancePolicySpec:
    return rebalancepolicies.RebalancePolicySpec.model_validate({"mode": mode, **spec})


def apply(hosts: list[rb.Host], guests: list[rb.Guest], plan: rb.Plan) -> dict[str, int]:
    """GiB per host after the plan's moves (and checks every move is from its source)."""
    where = {g.key: g.node for g in guests}
    mem = {g.key: g.usage.memory_bytes for g in guests}
    for m in plan.moves:
        assert where[m.vm] == m.source
        where[m.vm] = m.target
    out = {h.name: 0 for h in hosts}
    for key, node in where.items():
        out[node] += mem[key] // GIB
    return out


# -- move cost ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dirty", "transfer", "factor"),
    [
        (None, None, 1.0),  # nothing reported: the memory alone
        (None, GIB, 1.0),
        (0, GIB, 1.0),
        (GIB // 2, GIB, 2.0),  # dirties half as fast as it moves: 1/(1-0.5)
        (GIB * 3 // 4, GIB, 4.0),
        (GIB, GIB, rb.MAX_COST_FACTOR),  # does not converge: capped
        (5 * GIB, GIB, rb.MAX_COST_FACTOR),
        (int(GIB * 0.99), GIB, rb.MAX_COST_FACTOR),  # 100x, capped at 10x
    ],
)
def test_move_cost(dirty: int | None, transfer: int | None, factor: float) -> None:
    assert rb.move_cost(4 * GIB, dirty_rate=dirty, transfer_rate=transfer) == pytest.approx(
        4 * GIB * factor, rel=1e-6
    )


# -- Off ---------------------------------------------------------------------------


def test_off_moves_nothing_and_wakes_powered_off_nodes() -> None:
    hosts, guests = cluster({"a": [4, 4, 4], "b": []})
    hosts.append(host("c", powered_off=True))
    plan = rb.plan(hosts, guests, policy("Off"))
    assert plan.moves == ()
    assert plan.power_on == ("c",)


# -- Balance -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "threshold", "moves", "after"),
    [
        # three on one of three spread out (the e2e case)
        ({"a": [4, 4, 4], "b": [], "c": []}, 10, 2, {"a": 4, "b": 4, "c": 4}),
        # already within the threshold: nothing
        ({"a": [4, 2], "b": [4], "c": [4]}, 20, 0, {"a": 6, "b": 4, "c": 4}),
        # one small move is enough
        ({"a": [8, 2], "b": [6], "c": [6]}, 10, 1, {"a": 8, "b": 8, "c": 6}),
        # a single big VM cannot be split: moving it only swaps the imbalance
        ({"a": [12], "b": []}, 10, 0, {"a": 12, "b": 0}),
    ],
)
def test_balance(
    layout: dict[str, list[int]], threshold: int, moves: int, after: dict[str, int]
) -> None:
    hosts, guests = cluster(layout)
    plan = rb.plan(
        hosts, guests, policy(balance={"thresholdPercent": threshold}, maxMovesPerPass=10)
    )
    assert len(plan.moves) == moves, plan.message
    assert apply(hosts, guests, plan) == after


def test_balance_respects_the_move_budget() -> None:
    hosts, guests = cluster({"a": [2] * 6, "b": [], "c": []})
    plan = rb.plan(hosts, guests, policy(maxMovesPerPass=1))
    assert len(plan.moves) == 1
    assert "budget" in plan.message


def test_balance_prefers_the_cheaper_move_for_the_same_gain() -> None:
    hosts = [host("a", 2, 8), host("b")]
    guests = [
        guest(
            "ns/dirty", "a", 4, dirty_rate_bytes_per_second=GIB, transfer_rate_bytes_per_second=GIB
        ),
        guest("ns/quiet", "a", 4),
    ]
    plan = rb.plan(hosts, guests, policy(maxMovesPerPass=1))
    assert [m.vm for m in plan.moves] == ["ns/quiet"]
    assert plan.moves[0].cost_bytes == 4 * GIB


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"stay": "pinned by nodeSelector"}, "pinned"),
        ({"stay": "spec.rebalance is Never"}, "never"),
        ({"targets": frozenset({"a"})}, "preconditions accept no other node"),
    ],
)
def test_balance_never_moves_a_vm_that_must_stay(extra: dict[str, Any], why: str) -> None:
    hosts = [host("a", 2, 8), host("b")]
    guests = [guest("ns/x", "a", 4, **extra), guest("ns/y", "a", 4, **extra)]
    plan = rb.plan(hosts, guests, policy())
    assert plan.moves == (), why
    if "stay" in extra:
        assert plan.stays == {"ns/x": extra["stay"], "ns/y": extra["stay"]}


def test_balance_goes_only_to_nodes_the_preconditions_accept() -> None:
    hosts = [host("a", 3, 12), host("b"), host("c")]
    guests = [guest(f"ns/v{i}", "a", 4, targets=frozenset({"c"})) for i in range(3)]
    plan = rb.plan(hosts, guests, policy())
    assert plan.moves and {m.target for m in plan.moves} == {"c"}


@pytest.mark.parametrize(
    "bad",
    [{"alive": False}, {"cordoned": True}, {"cpu": 0}, {"powered_off": True}],
    ids=["lost", "cordoned", "no-capacity", "powered-off"],
)
def test_balance_never_targets_an_ineligible_node(bad: dict[str, Any]) -> None:
    hosts = [host("a", 3, 12), host("b", **bad)]
    guests = [guest(f"ns/v{i}", "a", 4) for i in range(3)]
    plan = rb.plan(hosts, guests, policy())
    assert plan.moves == ()


def test_balance_never_overbooks_a_target() -> None:
    # b has 16 GiB, 10 used: only a 4 GiB guest fits, never the 8 GiB one
    hosts = [host("a", 2, 12, memory_bytes=24 * GIB), host("b", 1, 10)]
    guests = [guest("ns/big", "a", 8), guest("ns/small", "a", 4), guest("ns/b", "b", 10)]
    plan = rb.plan(hosts, guests, policy(balance={"thresholdPercent": 1}))
    assert [m.vm for m in plan.moves] in ([], ["ns/small"])
    for m in plan.moves:
        assert m.vm != "ns/big"


def test_balance_node_gives_or_receives_never_both() -> None:
    hosts, guests = cluster({"a": [2] * 7, "b": [2] * 3, "c": [], "d": [2, 2, 2, 2, 2]})
    plan = rb.plan(hosts, guests, policy(maxMovesPerPass=20, balance={"thresholdPercent": 1}))
    sources = {m.source for m in plan.moves}
    targets = {m.target for m in plan.moves}
    assert plan.moves
    assert not sources & targets


# -- Consolidate -------------------------------------------------------------------


def consolidate(**spec: Any) -> rebalancepolicies.RebalancePolicySpec:
    return policy(
        "Consolidate",
        maxMovesPerPass=spec.pop("budget", 100),
        consolidate={"targetUtilizationPercent": 100, "wakeUtilizationPercent": 100, **spec},
    )


@pytest.mark.parametrize(
    ("layout", "freed", "after"),
    [
        # two light nodes fit into one
        ({"a": [4, 4], "b": [4], "c": [2]}, {"b", "c"}, {"a": 14, "b": 0, "c": 0}),
        # nothing fits anywhere else: nothing moves
        ({"a": [12], "b": [12]}, set(), {"a": 12, "b": 12}),
        # the cheapest node is emptied first
        ({"a": [10], "b": [6], "c": [2]}, {"c"}, {"a": 12, "b": 6, "c": 0}),
    ],
)
def test_consolidate(layout: dict[str, list[int]], freed: set[str], after: dict[str, int]) -> None:
    hosts, guests = cluster(layout)
    plan = rb.plan(hosts, guests, consolidate())
    assert set(plan.power_off) == freed, plan.message
    assert apply(hosts, guests, plan) == after


def test_consolidate_packs_only_up_to_the_target_utilization() -> None:
    hosts, guests = cluster({"a": [8], "b": [4]})
    assert rb.plan(hosts, guests, consolidate(targetUtilizationPercent=70)).moves == ()
    assert len(rb.plan(hosts, guests, consolidate(targetUtilizationPercent=80)).moves) == 1


def test_consolidate_empties_a_node_wholly_or_not_at_all() -> None:
    # c's 6 GiB fits on b, its 8 GiB fits nowhere: neither moves
    hosts, guests = cluster({"a": [14], "b": [10], "c": [8, 6]})
    plan = rb.plan(hosts, guests, consolidate())
    assert plan.moves == () and plan.power_off == ()


def test_consolidate_never_empties_a_node_with_a_vm_that_stays() -> None:
    hosts = [host("a", 1, 4), host("b", 1, 2)]
    guests = [guest("ns/a", "a", 4), guest("ns/b", "b", 2, stay="pinned by nodeSelector")]
    plan = rb.plan(hosts, guests, consolidate())
    assert [(m.vm, m.target) for m in plan.moves] == [("ns/a", "b")]
    assert plan.power_off == ("a",)


def test_consolidate_prefers_the_node_that_is_cheaper_to_empty() -> None:
    hosts = [host("a", 2, 8), host("b", 1, 4), host("c", 1, 4)]
    fast = {"dirty_rate_bytes_per_second": GIB, "transfer_rate_bytes_per_second": GIB}
    guests = [
        guest("ns/a1", "a", 4),
        guest("ns/a2", "a", 4),
        guest("ns/b", "b", 4, **fast),
        guest("ns/c", "c", 4),
    ]
    plan = rb.plan(hosts, guests, consolidate(budget=1))
    assert [(m.vm, m.source) for m in plan.moves] == [("ns/c", "c")]


def test_consolidate_respects_the_move_budget() -> None:
    hosts, guests = cluster({"a": [2], "b": [2, 2], "c": [8]})
    plan = rb.plan(hosts, guests, consolidate(budget=1))
    assert len(plan.moves) == 1 and plan.power_off == ("a",)


def test_consolidate_marks_an_empty_node_at_once_but_keeps_one_up() -> None:
    hosts, guests = cluster({"a": [4], "b": [], "c": []})
    plan = rb.plan(hosts, guests, consolidate())
    assert set(plan.power_off) == {"b", "c"} and plan.moves == ()
    empty_hosts, _ = cluster({"a": [], "b": []})
    assert len(rb.plan(empty_hosts, [], consolidate()).power_off) == 1


def test_consolidate_power_off_false_moves_but_marks_nothing() -> None:
    hosts, guests = cluster({"a": [4, 4], "b": [2]})
    plan = rb.plan(hosts, guests, consolidate(powerOff=False))
    assert len(plan.moves) == 1 and plan.power_off == ()


def test_consolidate_never_fills_a_powered_off_node() -> None:
    hosts, guests = cluster({"a": [8], "b": [4]})
    hosts.append(host("z", powered_off=True))
    plan = rb.plan(hosts, guests, consolidate())
    assert all(m.target != "z" for m in plan.moves)


@pytest.mark.parametrize(
    ("used_gib", "sleeping", "woken"),
    [
        (14, {"y": 32, "z": 16}, ()),  # 14/32 = 44%: under the wake threshold
        (30, {"y": 16, "z": 32}, ("z",)),  # 94% > 90%: wake one, the larger first
        (30, {"y": 4, "z": 4}, ("y", "z")),  # one brings it to 83%, not under 80%
    ],
)
def test_consolidate_wakes_nodes_when_utilization_rises(
    used_gib: int, sleeping: dict[str, int], woken: tuple[str, ...]
) -> None:
    per = used_gib // 2
    hosts = [host("a", 1, per), host("b", 1, used_gib - per)]
    hosts += [host(n, powered_off=True, memory_bytes=g * GIB) for n, g in sleeping.items()]
    guests = [guest("ns/a", "a", per), guest("ns/b", "b", used_gib - per)]
    pol = policy(
        "Consolidate",
        consolidate={"targetUtilizationPercent": 80, "wakeUtilizationPercent": 90},
    )
    plan = rb.plan(hosts, guests, pol)
    assert plan.power_on == woken, plan.message
    if woken:
        assert plan.moves == ()


@pytest.mark.parametrize("mode", ["Off", "Balance", "Consolidate"])
def test_a_powered_off_node_holding_vms_is_woken_first(mode: str) -> None:
    hosts = [host("a", 1, 4), host("b", 1, 2, powered_off=True)]
    guests = [guest("ns/a", "a", 4), guest("ns/b", "b", 2)]
    plan = rb.plan(hosts, guests, policy(mode))
    assert plan.power_on == ("b",) and plan.moves == ()


def test_a_powered_off_node_whose_lease_lapsed_is_still_woken() -> None:
    hosts = [host("a", 1, 15), host("z", powered_off=True, alive=False)]
    guests = [guest("ns/a", "a", 15)]
    plan = rb.plan(hosts, guests, policy("Consolidate"))
    assert plan.power_on == ("z",)


def test_a_woken_node_is_not_powered_off_again_while_the_rest_are_over_the_target() -> None:
    # a is at 87.5 %: under the 90 % wake threshold with b up, over the 80 % target alone
    hosts = [host("a", 1, 14), host("b")]
    guests = [guest("ns/a", "a", 14)]
    pol = policy(
        "Consolidate", consolidate={"targetUtilizationPercent": 80, "wakeUtilizationPercent": 90}
    )
    plan = rb.plan(hosts, guests, pol)
    assert plan.power_off == () and plan.power_on == ()
    # at 75 % it may go: a alone stays within the target
    hosts = [host("a", 1, 12), host("b")]
    assert rb.plan(hosts, [guest("ns/a", "a", 12)], pol).power_off == ("b",)


def test_a_node_is_not_emptied_when_the_others_together_would_pass_the_target() -> None:
    # each under 80 % alone, but c's 6 GiB on a or b leaves 26 of 32 GiB = 81 %
    hosts, guests = cluster({"a": [10], "b": [10], "c": [6]})
    pol = policy(
        "Consolidate",
        maxMovesPerPass=10,
        consolidate={"targetUtilizationPercent": 80, "wakeUtilizationPercent": 90},
    )
    assert rb.plan(hosts, guests, pol).moves == ()
