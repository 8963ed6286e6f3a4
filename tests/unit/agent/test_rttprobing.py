"""RTT probing: endpoints from the node contract, summaries, hysteresis, and a real TCP
connect on loopback (a listener and a closed port this test made)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from kubevisor.agent import rttprobing
from kubevisor.api import nodes

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("capacity", "endpoint"),
    [
        (nodes.Capacity(migration_uri="qemu+tcp://10.77.0.12/system"), ("10.77.0.12", 16509)),
        (nodes.Capacity(migration_uri="qemu+tcp://10.77.0.12:1234/system"), ("10.77.0.12", 1234)),
        (nodes.Capacity(address="10.77.0.13"), ("10.77.0.13", 16509)),
        (nodes.Capacity(migration_uri="qemu:///system", address="a"), ("a", 16509)),
        (nodes.Capacity(), None),
    ],
)
def test_peer_endpoint(capacity: nodes.Capacity, endpoint: tuple[str, int] | None) -> None:
    assert rttprobing.peer_endpoint(capacity) == endpoint


@pytest.mark.parametrize(
    ("samples", "rtt"),
    [([1.0, 9.0, 2.0], 2.0), ([None, 3.0], 3.0), ([None, None], None), ([], None)],
)
def test_summarise(samples: list[float | None], rtt: float | None) -> None:
    assert rttprobing.summarise(samples) == rtt


@pytest.mark.parametrize(
    ("case", "previous", "measured", "published"),
    [
        ("first value", {}, {"n2": 0.4567}, {"n2": 0.46}),
        ("jitter kept", {"n2": 0.4}, {"n2": 0.8}, {"n2": 0.4}),
        ("small relative change kept", {"n2": 20.0}, {"n2": 23.0}, {"n2": 20.0}),
        ("big change published", {"n2": 0.4}, {"n2": 12.0}, {"n2": 12.0}),
        ("unreachable dropped", {"n2": 0.4}, {"n2": None}, {}),
        ("gone peer dropped", {"n2": 0.4, "n3": 1.0}, {"n2": 0.4}, {"n2": 0.4}),
    ],
)
def test_report(
    case: str,
    previous: dict[str, float],
    measured: dict[str, float | None],
    published: dict[str, float],
) -> None:
    assert rttprobing.report(previous, measured) == published


async def test_probe_times_a_real_connect_and_fails_on_a_closed_port() -> None:
    accepted = 0
    all_accepted = asyncio.Event()

    async def on_connect(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        if accepted == 3:
            all_accepted.set()
        w.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    async with server:
        rtts = await rttprobing.measure(
            {"up": ("127.0.0.1", port), "down": ("127.0.0.1", closed)}, count=3
        )
        await asyncio.wait_for(all_accepted.wait(), 5)  # the server saw every probe
    print(f"loopback rtt: {rtts}")
    assert rtts["down"] is None
    up = rtts["up"]
    assert up is not None and up >= 0
    assert accepted == 3
