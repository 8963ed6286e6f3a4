"""Scraping a process's Prometheus endpoint in tests: the exposition text parsed with
prometheus_client's own parser, so a test reads exactly what Prometheus would.

``Samples`` maps (sample name, sorted label pairs) to the value; ``value`` looks one up
(0 when the series is absent: a counter nobody incremented yet is not exposed).
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Mapping

from prometheus_client import parser

Samples = Mapping[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    """A TCP port free on loopback right now (for a process's --metrics-port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition text."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def scrape(
    port: int, *, host: str = "127.0.0.1"
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics of ``host:port`` and parse it (OSError while nothing listens)."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        return parse(resp.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` exactly (all its labels given), 0 when absent."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over the series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))
