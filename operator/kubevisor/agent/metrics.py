"""The agent's Prometheus metrics: every name defined here, once.

Why these places count and nothing else does: every pass of every kind goes through
``runtime.looping.WorkLoop`` (reconcile counts and time per loop), every write goes
through the ``agent.kube`` adapters (API writes by verb and resource), and the VMs of
this node and the VRFs' routes are read from the informers' caches when scraped (so a
gauge is what the cache holds, never a running tally that could drift, and a restarted
agent reports them at once). docs/observability.md lists these names (a
unit test compares the list with this module).

The exporter is prometheus_client's HTTP server on a thread of its own: a scrape never
waits for the event loop and the loop never waits for a scrape.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import prometheus_client
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: Seconds buckets for one pass (a libvirt call to a slow disk copy).
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)

RECONCILES = Counter(
    "kubevisor_agent_reconciles",
    "Passes of the agent's work loops by kind and outcome (done, error).",
    ["kind", "outcome"],
)
RECONCILE_SECONDS = Histogram(
    "kubevisor_agent_reconcile_duration_seconds",
    "Time of one pass of the agent's work loops by kind.",
    ["kind"],
    buckets=PASS_BUCKETS,
)
API_WRITES = Counter(
    "kubevisor_agent_api_writes",
    "Writes the agent made to the API server, by verb and resource.",
    ["verb", "resource"],
)
VMS_NAME = "kubevisor_agent_vms"
VRF_ROUTES_NAME = "kubevisor_agent_vrf_routes_installed"


class _VMPhases(Collector):
    """``kubevisor_agent_vms{phase}``: the VMs placed on this node by status.phase, read
    from the informer's cache at scrape time (``count_vms``)."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[dict[str, Any]]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            VMS_NAME, "VirtualMachines placed on this node by status.phase.", labels=["phase"]
        )
        # list() first: one C-level copy while the loop thread may change the cache
        objs = list(self.source()) if self.source is not None else []
        tally = Tally(str((o.get("status") or {}).get("phase") or "") for o in objs)
        for phase, count in sorted(tally.items()):
            family.add_metric([phase], count)
        yield family


_VM_PHASES = _VMPhases()
prometheus_client.REGISTRY.register(_VM_PHASES)


def count_vms(source: Callable[[], Iterable[dict[str, Any]]]) -> None:
    """Count the VMs ``source()`` returns (the placed VMs' informer cache) on scrapes."""
    _VM_PHASES.source = source


class _VRFRoutes(Collector):
    """``kubevisor_agent_vrf_routes_installed{namespace,vrf}``: this node's
    ``status.nodes.<node>.routesInstalled`` of every VRF in the VRF informer's cache
    (``count_vrf_routes``), so a restarted agent reports them before it writes again."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[dict[str, Any]]] | None = None
        self.node = ""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            VRF_ROUTES_NAME,
            "Static routes of a VRF's spec present in its table on this node.",
            labels=["namespace", "vrf"],
        )
        for obj in list(self.source()) if self.source is not None else []:
            meta = obj.get("metadata") or {}
            entry = ((obj.get("status") or {}).get("nodes") or {}).get(self.node) or {}
            if entry.get("routesInstalled") is not None:
                labels = [str(meta.get("namespace", "")), str(meta.get("name", ""))]
                family.add_metric(labels, entry["routesInstalled"])
        yield family


_VRF_ROUTES = _VRFRoutes()
prometheus_client.REGISTRY.register(_VRF_ROUTES)


def count_vrf_routes(source: Callable[[], Iterable[dict[str, Any]]], *, node: str) -> None:
    """Report ``node``'s routesInstalled of the VRFs ``source()`` returns on scrapes."""
    _VRF_ROUTES.source = source
    _VRF_ROUTES.node = node


def api_write(verb: str, resource: str) -> None:
    """Count one write the API server accepted."""
    API_WRITES.labels(verb=verb, resource=resource).inc()


def serve(address: str, port: int) -> None:
    """Export on ``address:port`` from a thread of its own (see module docstring)."""
    prometheus_client.start_http_server(port, addr=address)
