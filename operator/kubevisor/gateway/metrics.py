"""The gateway's Prometheus metrics: every name defined here, once.

Counted where a websocket is admitted or refused (``serving``): a refusal by its reason
(the admission reasons of ``admitting``, and ``DisplayUnreachable`` when the display does
not answer). docs/observability.md lists these names (a unit test compares the list with
this module). The exporter is prometheus_client's HTTP server on a thread of its own, on
a port apart from the public one (metrics are for the cluster, not for browsers).
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import Counter, Gauge

SESSIONS_OPEN = Gauge("kubevisor_gateway_sessions_open", "Display sessions open now.")
SESSIONS = Counter("kubevisor_gateway_sessions", "Display sessions started.")
REFUSALS = Counter(
    "kubevisor_gateway_refusals",
    "Websocket requests refused, by reason (admission reason or DisplayUnreachable).",
    ["reason"],
)


def serve(address: str, port: int) -> None:
    """Export on ``address:port`` from a thread of its own."""
    prometheus_client.start_http_server(port, addr=address)
