"""The placement ledger: totals per node from events, reservations and lists, and the
ordering rules that keep a late event or list from undoing a fresh placement."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kubevisor.controller.placement import ledger
from kubevisor.controller.placement.ledger import Ledger, Seen
from kubevisor.controller.placement.placing import Usage

pytestmark = pytest.mark.unit

Mi = 2**20
SMALL = Usage(1, 256 * Mi, 0)
BIG = Usage(2, 1024 * Mi, 1)

Step = Callable[[Ledger], None]


def obs(uid: str, node: str | None, usage: Usage = SMALL, rv: int | None = None) -> Step:
    return lambda led: led.observe(Seen(uid, node, usage if node else Usage(), rv))


def reserve(uid: str, node: str, usage: Usage = SMALL) -> Step:
    return lambda led: led.reserve(uid, node, usage)


def confirm(uid: str, rv: int | None) -> Step:
    return lambda led: led.confirm(uid, rv)


def release(uid: str) -> Step:
    return lambda led: led.release(uid)


def forget(uid: str) -> Step:
    return lambda led: led.forget(uid)


def resync(items: list[Seen], rv: int | None) -> Step:
    return lambda led: led.resync(items, rv=rv)


@pytest.mark.parametrize(
    ("steps", "totals"),
    [
        pytest.param([], {}, id="empty"),
        pytest.param([obs("a", "n1"), obs("b", "n1"), obs("c", "n2", BIG)],
                     {"n1": SMALL + SMALL, "n2": BIG}, id="events sum per node"),
        pytest.param([obs("a", "n1", rv=1), obs("a", "n1", BIG, rv=2)], {"n1": BIG},
                     id="a new machine replaces the old usage"),
        pytest.param([obs("a", "n1", rv=1), obs("a", "n1", Usage(), rv=2)], {},
                     id="stopped VM frees its node"),
        pytest.param([obs("a", "n1", rv=5), obs("a", "n1", BIG, rv=3)], {"n1": SMALL},
                     id="older resourceVersion is ignored"),
        pytest.param([obs("a", "n1", rv=1), obs("a", "n1", BIG)], {"n1": BIG},
                     id="unknown resourceVersion counts as newer"),
        pytest.param([obs("a", "n1"), forget("a")], {}, id="deletion removes"),
        pytest.param([obs("a", "n1", rv=1), forget("a"), obs("a", "n1", rv=1)], {},
                     id="no resurrection after deletion"),
        # Reservations.
        pytest.param([reserve("a", "n1")], {"n1": SMALL}, id="reservation counts at once"),
        pytest.param([obs("a", None, rv=1), reserve("a", "n1"), obs("a", None, rv=2)],
                     {"n1": SMALL}, id="stale event without nodeName keeps a reservation"),
        pytest.param([reserve("a", "n1"), release("a")], {}, id="failed write releases"),
        pytest.param([reserve("a", "n1"), obs("a", "n1", rv=7), release("a")],
                     {"n1": SMALL}, id="release after the event showed the node is a no-op"),
        pytest.param([reserve("a", "n1"), confirm("a", 7), obs("a", None, rv=6)],
                     {"n1": SMALL}, id="confirmed: older event without node ignored"),
        pytest.param([reserve("a", "n1"), confirm("a", 7), obs("a", None, rv=8)], {},
                     id="confirmed: a newer event rules"),
        pytest.param([reserve("a", "n1"), obs("a", "n1", rv=8), confirm("a", 7),
                      obs("a", "n1", rv=7)], {"n1": SMALL}, id="confirm after the event"),
        pytest.param([reserve("a", "n1"), forget("a"), confirm("a", 7)], {},
                     id="deleted while writing"),
        pytest.param([reserve("a", "n1"), reserve("b", "n1"), reserve("c", "n2", BIG),
                      release("b")], {"n1": SMALL, "n2": BIG}, id="several reservations"),
        # Full lists (priming at start, periodic healing).
        pytest.param([resync([Seen("a", "n1", SMALL, 3), Seen("b", "n2", BIG, 4)], 10)],
                     {"n1": SMALL, "n2": BIG}, id="priming from a list"),
        pytest.param([obs("a", "n1", rv=3), resync([], 10)], {},
                     id="missing from a newer list: deleted meanwhile"),
        pytest.param([obs("a", "n1", rv=12), resync([], 10)], {"n1": SMALL},
                     id="missing from an older list: created after it"),
        pytest.param([reserve("a", "n1"), resync([Seen("a", None, Usage(), 3)], 10)],
                     {"n1": SMALL}, id="list from before our write keeps the reservation"),
        pytest.param([reserve("a", "n1"), confirm("a", 12),
                      resync([Seen("a", None, Usage(), 3)], 10)],
                     {"n1": SMALL}, id="confirmed write newer than the list"),
        pytest.param([obs("a", "n1", rv=3), forget("a"), resync([Seen("a", "n1", SMALL, 3)], 4)],
                     {}, id="list from before a deletion does not resurrect"),
        pytest.param([obs("a", "n1", rv=9), resync([Seen("a", "n1", BIG, 8)], 8)],
                     {"n1": SMALL}, id="list older than the event held"),
    ],
)  # fmt: skip
def test_totals(steps: list[Step], totals: dict[str, Usage]) -> None:
    led = Ledger()
    for step in steps:
        step(led)
    assert led.totals() == totals


def test_totals_exclude_own_share() -> None:
    led = Ledger()
    led.observe(Seen("a", "n1", SMALL, 1))
    led.observe(Seen("b", "n1", BIG, 2))
    assert led.totals(exclude="a") == {"n1": BIG}
    assert led.totals(exclude="zz") == {"n1": SMALL + BIG}
    assert led.totals() == {"n1": SMALL + BIG}  # a copy: exclude changed nothing


def test_primed_only_after_a_list() -> None:
    led = Ledger()
    led.observe(Seen("a", "n1", SMALL, 1))
    assert not led.primed
    led.resync([], rv=0)
    assert led.primed


def _vm(**status: Any) -> dict[str, Any]:
    return {"metadata": {"uid": "u1", "resourceVersion": "42"}, "status": status}


MACHINE = {"cpu": {"cores": 2}, "memory": "512Mi", "gpus": 1}


@pytest.mark.parametrize(
    ("obj", "want"),
    [
        (_vm(), Seen("u1", None, Usage(), 42)),
        (
            _vm(nodeName="n1", machine=MACHINE, desiredState="Running"),
            Seen("u1", "n1", Usage(2, 512 * Mi, 1), 42),
        ),
        (
            _vm(nodeName="n1", machine=MACHINE, desiredState="Stopped"),
            Seen("u1", "n1", Usage(), 42),
        ),
        (_vm(nodeName="n1"), Seen("u1", "n1", Usage(), 42)),
        (_vm(nodeName="n1", machine={"cpu": "many"}), Seen("u1", "n1", Usage(), 42)),
        (_vm(machine=MACHINE, desiredState="Running"), Seen("u1", None, Usage(), 42)),
        ({"metadata": {"uid": "u1", "resourceVersion": "opaque"}}, Seen("u1", None, Usage())),
    ],
)
def test_seen_from_raw_vm(obj: dict[str, Any], want: Seen) -> None:
    assert ledger.seen(obj) == want


def test_placer_choose_reserves_so_the_next_choice_counts_it() -> None:
    from kubevisor.controller.placement import placing, reserving

    placer = reserving.Placer()
    nodes = [placing.Node("n1", cpu=4, memory_bytes=512 * Mi, networks=frozenset({"default"}))]
    request = placing.Request(1, 256 * Mi, 0, frozenset({"default"}), {})
    assert [placer.choose(uid, request, nodes).node for uid in "abc"] == ["n1", "n1", None]
    assert "n1: not enough memory (need 256Mi, free 0)" in placer.choose("d", request, nodes).reason
    placer.release("b")
    assert placer.choose("d", request, nodes).node == "n1"
    # A write that returned the VM placed confirms; a stale event then changes nothing.
    placer.confirm(
        "d", {"metadata": {"uid": "d", "resourceVersion": "9"}, "status": {"nodeName": "n1"}}
    )
    placer.observe({"metadata": {"uid": "d", "resourceVersion": "8"}, "status": {}})
    assert placer.ledger.totals() == {"n1": Usage(2, 512 * Mi, 0)}
