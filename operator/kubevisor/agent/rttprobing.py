"""Round-trip times to peer nodes, for migration's maxRTT precondition.

The probe is a TCP connect to the peer's libvirtd (the port a peer-to-peer migration
opens first), timed from SYN to established: one round trip, no root, no ICMP socket,
and it fails exactly when the migration's control connection would. The agent probes
every peer a few times per interval, reports the median per peer in its Lease
(``nodes.ANNOTATION_RTTS``) and rewrites the annotation only when a value moved
noticeably (:func:`report`), so RTT jitter does not turn into API writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import urlsplit

from kubevisor.api import nodes

#: libvirtd's TCP port (``tcp_port`` in libvirtd.conf) when the URI names none.
LIBVIRT_TCP_PORT: Final = 16509


def peer_endpoint(capacity: nodes.Capacity) -> tuple[str, int] | None:
    """Where to probe a peer (pure): the host and port of its ``migrationURI``
    (``qemu+tcp://10.77.0.12/system``), else its ``address`` on libvirtd's port; None
    when the peer publishes neither (it cannot receive migrations anyway)."""
    if capacity.migration_uri:
        parts = urlsplit(capacity.migration_uri)
        if parts.hostname:
            try:
                port = parts.port
            except ValueError:
                port = None
            return parts.hostname, port or LIBVIRT_TCP_PORT
    if capacity.address:
        return capacity.address, LIBVIRT_TCP_PORT
    return None


def summarise(samples: Iterable[float | None]) -> float | None:
    """One RTT from a round of samples (pure): the median of those that succeeded (robust
    to one slow connect on a busy host); None when none did."""
    ok = [s for s in samples if s is not None]
    return statistics.median(ok) if ok else None


def report(
    previous: Mapping[str, float],
    measured: Mapping[str, float | None],
    *,
    min_change_ms: float = 0.5,
    relative: float = 0.2,
) -> dict[str, float]:
    """The RTTs to publish (pure). A peer keeps its previous value unless the new one
    differs by more than ``min_change_ms`` and by more than ``relative`` of the old one;
    a peer that could not be reached, or is no longer a peer, is dropped (its RTT is
    unknown, which the precondition refuses rather than trusting an old number)."""
    out: dict[str, float] = {}
    for peer, rtt in measured.items():
        if rtt is None:
            continue
        old = previous.get(peer)
        if old is not None and abs(rtt - old) <= max(min_change_ms, relative * old):
            out[peer] = old
        else:
            out[peer] = round(rtt, 2)
    return out


async def probe(host: str, port: int, *, timeout_s: float = 1.0) -> float | None:
    """One TCP connect to ``host:port``, in milliseconds; None when it is refused or does
    not complete within ``timeout_s``."""
    started = time.perf_counter()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return None
    elapsed = (time.perf_counter() - started) * 1000
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return elapsed


async def measure(
    peers: Mapping[str, tuple[str, int]], *, count: int = 3, timeout_s: float = 1.0
) -> dict[str, float | None]:
    """The RTT to every peer (``{node: (host, port)}``): ``count`` sequential probes per
    peer, peers in parallel, each summarised by :func:`summarise`."""

    async def one(host: str, port: int) -> float | None:
        return summarise([await probe(host, port, timeout_s=timeout_s) for _ in range(count)])

    names = sorted(peers)
    results = await asyncio.gather(*(one(*peers[n]) for n in names))
    return dict(zip(names, results, strict=True))
