"""Parsers of the routing daemon's own output into sessions and routes: pure, table-tested
on output captured from BIRD 2.0.12 (tests/unit/vrf/captured/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubevisor.agent.vrfs import sessions
from kubevisor.agent.vrfs.sessions import Session
from kubevisor.api import vrfrouting

pytestmark = pytest.mark.unit

CAPTURED = Path(__file__).parent / "captured"


def _captured(name: str) -> str:
    return (CAPTURED / name).read_text()


def test_bird_protocols_all_lists_bgp_and_ospf_sessions_only() -> None:
    full = sessions.bird_ospf_full(_captured("bird-ospf-neighbors.txt"))
    got = sessions.bird_protocols(_captured("bird-protocols-all.txt"), full)
    assert got == [
        Session("peer", "BGP", True, "Established", "10.0.0.2", None, 1),
        Session("down1", "BGP", False, "Connect Socket: No route to host", "10.0.0.9", None, 0),
        Session("o1", "OSPF", True, "Running", None, 1, 1),
    ]


@pytest.mark.parametrize(
    ("text", "full", "expected"),
    [
        pytest.param("BIRD 2.0.12 ready.\n", {}, [], id="no-protocols"),
        pytest.param(
            "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\n"
            "device1    Device     ---        up     08:05:35.621  \n",
            {},
            [],
            id="device-is-no-session",
        ),
        pytest.param(
            "o1         OSPF       master4    up     08:04:41.243  Running\n",
            {},
            [Session("o1", "OSPF", False, "Running", None, 0, 0)],
            id="ospf-without-full-adjacency-is-down",
        ),
        pytest.param(
            "b          BGP        ---        down   2026-12-01    \n"
            "    Neighbor address: fd00::2\n",
            {},
            [Session("b", "BGP", False, "down", "fd00::2", None, 0)],
            id="disabled-bgp-older-than-a-day",
        ),
        pytest.param(
            "b          BGP        ---        up     08:04:32.563  Established   \n"
            "  Channel ipv4\n    Routes:         3 imported, 1 exported, 3 preferred\n"
            "  Channel ipv6\n    Routes:         2 imported, 0 exported, 2 preferred\n",
            {},
            [Session("b", "BGP", True, "Established", None, None, 5)],
            id="routes-of-both-channels",
        ),
    ],
)
def test_bird_protocols_table(text: str, full: dict[str, int], expected: list[Session]) -> None:
    assert sessions.bird_protocols(text, full) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_captured("bird-ospf-neighbors.txt"), {"o1": 1}),
        ("BIRD 2.0.12 ready.\nThere is no OSPF protocol running\n", {}),
        (
            "o1:\nRouter ID   \tPri\t     State     \tDTime\tInterface  Router IP\n"
            "10.0.0.2    \t  1\tFull/DR   \t 2.9\tv0         10.0.0.2\n"
            "10.0.0.3    \t  1\tExStart/Other\t 2.9\tv0         10.0.0.3\n"
            "o2:\nRouter ID   \tPri\t     State     \tDTime\tInterface  Router IP\n",
            {"o1": 1, "o2": 0},
        ),
    ],
)
def test_bird_ospf_full(text: str, expected: dict[str, int]) -> None:
    assert sessions.bird_ospf_full(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_captured("bird-route-count.txt"), 4),
        ("BIRD 2.0.12 ready.\n", None),
    ],
)
def test_bird_route_count(text: str, expected: int | None) -> None:
    assert sessions.bird_route_count(text) == expected


def test_summary_counts_and_wire_form_fits_the_api() -> None:
    summary = sessions.summarize(
        sessions.bird_protocols(
            _captured("bird-protocols-all.txt"),
            sessions.bird_ospf_full(_captured("bird-ospf-neighbors.txt")),
        ),
        4,
    )
    assert (summary.up, summary.learned, len(summary.sessions)) == (2, 2, 3)
    assert [s.name for s in summary.down()] == ["down1"]
    for s in summary.sessions:
        vrfrouting.VRFSession.model_validate({k: v for k, v in s.wire().items() if v is not None})


def test_frr_bgp_summary_lists_each_neighbour() -> None:
    assert sessions.frr_bgp(_captured("frr-bgp-summary.json")) == [
        Session("10.0.0.1", "BGP", True, "Established", "10.0.0.1", None, 3),
        Session("10.0.0.9", "BGP", False, "Active", "10.0.0.9", None, 0),
    ]


def test_frr_ospf_instance_is_up_with_a_full_adjacency() -> None:
    got = sessions.frr_ospf(
        _captured("frr-ospf-neighbor.json"), _captured("frr-route-summary.json")
    )
    assert got == [Session("ospf", "OSPF", True, "Full/DR", None, 1, 1)]
    alone = sessions.frr_ospf('{"neighbors":{}}', "{}")
    assert alone == [Session("ospf", "OSPF", False, "no neighbours", None, 0, 0)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [(_captured("frr-route-summary.json"), 6), ("% Unknown command", None), ("", None)],
)
def test_frr_route_count(text: str, expected: int | None) -> None:
    assert sessions.frr_route_count(text) == expected


@pytest.mark.parametrize("text", ["", "% BGP instance not found", "[]", '{"ipv4Unicast": 3}'])
def test_frr_bgp_without_an_instance_has_no_sessions(text: str) -> None:
    assert sessions.frr_bgp(text) == []
