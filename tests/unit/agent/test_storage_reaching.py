"""Which StorageBackends a node reaches: the probe of each type (table), the reached map,
and the probe itself against a real TCP listener and a closed port."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from kubevisor.agent.kernel import netnsthreads
from kubevisor.agent.storagebackends import reaching

pytestmark = pytest.mark.unit


def _backend(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": spec}


NFS = {"type": "nfs", "nfs": {"server": "10.77.0.250", "export": "/exports/vms"}}
ISCSI = {
    "type": "iscsi",
    "iscsi": {"portal": "san.lab", "port": 3261, "iqn": "iqn.2026-12.io.kv:t"},
}


@pytest.mark.parametrize(
    ("spec", "shared_dir", "probe"),
    [
        ({"type": "local"}, None, reaching.Probe("b", "local")),
        ({"type": "shared"}, Path("/srv"), reaching.Probe("b", "shared", directory=Path("/srv"))),
        ({"type": "shared"}, None, reaching.Probe("b", "shared", possible=False)),
        (NFS, None, reaching.Probe("b", "nfs", endpoint=("10.77.0.250", 2049))),
        (ISCSI, None, reaching.Probe("b", "iscsi", endpoint=("san.lab", 3261))),
    ],
    ids=["local", "shared", "shared-without-dir", "nfs", "iscsi"],
)
def test_probe_per_type(
    spec: dict[str, Any], shared_dir: Path | None, probe: reaching.Probe
) -> None:
    assert reaching.probes([_backend("b", spec)], shared_dir=shared_dir) == [probe]


def test_unreadable_backends_are_skipped_and_order_is_by_name() -> None:
    objects = [
        _backend("z", {"type": "local"}),
        _backend("bad", {"type": "ceph"}),
        _backend("nfs-without-export", {"type": "nfs"}),
        _backend("a", {"type": "local"}),
    ]
    assert [p.name for p in reaching.probes(objects, shared_dir=None)] == ["a", "z"]


def test_reached_lists_successful_possible_probes_with_their_type() -> None:
    ok = reaching.Probe("nas", "nfs", endpoint=("h", 1))
    down = reaching.Probe("san", "iscsi", endpoint=("h", 2))
    impossible = reaching.Probe("sh", "shared", possible=False)
    assert reaching.reached([(ok, True), (down, False), (impossible, True)]) == {"nas": "nfs"}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_probe_connects_to_a_listener_and_fails_on_a_closed_port(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, bool, bool, bool]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            up = await reaching.probe(reaching.Probe("a", "nfs", endpoint=("127.0.0.1", port)))
        closed = await reaching.probe(
            reaching.Probe("b", "nfs", endpoint=("127.0.0.1", _closed_port()))
        )
        there = await reaching.probe(reaching.Probe("c", "shared", directory=tmp_path))
        gone = await reaching.probe(reaching.Probe("d", "shared", directory=tmp_path / "x"))
        return up, closed, there, gone

    assert asyncio.run(scenario()) == (True, False, True, False)


def test_probe_on_executor_threads_uses_their_connect() -> None:
    """The netns path: the same probe run through an executor's blocking connect (here
    the agent's own namespace; the e2e runs it in a simulated node's)."""

    async def scenario() -> tuple[bool, bool]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with netnsthreads.executor(None) as pool:
            async with server:
                up = await reaching.probe(
                    reaching.Probe("a", "nfs", endpoint=("127.0.0.1", port)), pool
                )
            closed = await reaching.probe(
                reaching.Probe("b", "nfs", endpoint=("127.0.0.1", _closed_port())), pool
            )
        return up, closed

    assert asyncio.run(scenario()) == (True, False)


NFS_PROBE = reaching.Probe("nas", "nfs", endpoint=("10.77.0.250", 2049))
LOCAL_PROBE = reaching.Probe("local", "local")
NO_DIR = reaching.Probe("shared", "shared", possible=False)
LOST = ("nas", "StorageUnreachable", "node n1 cannot reach nfs backend nas (10.77.0.250:2049).")
BACK = ("nas", "StorageReachable", "node n1 reaches nas again.")


@pytest.mark.parametrize(
    ("before", "after", "want"),
    [
        (None, {"local": "local"}, [LOST]),  # first round: what is unreachable is news
        (None, {"local": "local", "nas": "nfs"}, []),
        ({"local": "local", "nas": "nfs"}, {"local": "local"}, [LOST]),  # lost
        ({"local": "local"}, {"local": "local"}, []),  # still lost: no repeat
        ({"local": "local"}, {"local": "local", "nas": "nfs"}, [BACK]),  # back
        ({"local": "local", "nas": "nfs"}, {"local": "local", "nas": "nfs"}, []),
    ],
)
def test_changes_of_reach_are_events(
    before: dict[str, str] | None, after: dict[str, str], want: list[tuple[str, str, str]]
) -> None:
    # a shared backend this node has no directory for is never reached: not a failure
    probes = [LOCAL_PROBE, NFS_PROBE, NO_DIR]
    assert reaching.changes(before, after, probes, node="n1") == want


def test_reach_once_announces_on_the_backends_object(tmp_path: Path) -> None:
    listed = [{"metadata": {"name": "nas"}, "spec": {"type": "shared"}}]
    posted: list[tuple[str, str, str]] = []

    async def announce(obj: dict[str, Any], reason: str, message: str) -> None:
        posted.append((obj["metadata"]["name"], reason, message))

    async def list_backends() -> list[dict[str, Any]]:
        return listed

    gone = tmp_path / "unmounted"  # the shared directory is not there (any more)
    found = asyncio.run(
        reaching.reach_once(
            list_backends, shared_dir=gone, before={"nas": "shared"}, announce=announce, node="n1"
        )
    )
    assert found == {}
    assert posted == [
        ("nas", "StorageUnreachable", f"node n1 cannot reach shared backend nas ({gone}).")
    ]
