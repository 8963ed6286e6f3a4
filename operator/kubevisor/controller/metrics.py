"""The controller's Prometheus metrics: every name defined here, once.

Why one module at the bottom of the controller's layers: the places that count are the
shared runtime (every reconcile passes through ``runtime.reconciling``), the API adapter
(every write passes through ``kube.client``) and the runtime's watch observer
(``runtime.observing``: phases and migration figures as the API server reports them);
no kind's handler counts anything itself. docs/observability.md lists these names (a
unit test compares the list with this module).

The exporter is prometheus_client's HTTP server on a thread of its own: a scrape never
waits for the event loop and the loop never waits for a scrape (metric updates are
thread-safe).
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram

#: Seconds buckets for reconcile passes (milliseconds to a stuck API call).
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Seconds buckets for a VM's start and a migration's total time.
LONG_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: Seconds buckets for a migration's downtime (the policy's default limit is 300 ms).
DOWNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)

RECONCILES = Counter(
    "kubevisor_controller_reconciles",
    "Reconcile passes by kind and outcome (done, wait, gone, error).",
    ["kind", "outcome"],
)
RECONCILE_SECONDS = Histogram(
    "kubevisor_controller_reconcile_duration_seconds",
    "Time of one reconcile pass by kind.",
    ["kind"],
    buckets=PASS_BUCKETS,
)
API_WRITES = Counter(
    "kubevisor_controller_api_writes",
    "Writes the controller made to the API server, by verb and resource.",
    ["verb", "resource"],
)
VMS = Gauge(
    "kubevisor_controller_vms",
    "VirtualMachines by status.phase as the controller last saw them.",
    ["phase"],
)
VM_START_SECONDS = Histogram(
    "kubevisor_controller_vm_start_seconds",
    "From the controller first seeing a VM that should run to seeing it Running.",
    buckets=LONG_BUCKETS,
)
MIGRATIONS = Counter(
    "kubevisor_controller_migrations",
    "Migrations that ended, by final phase (Succeeded, Failed, Cancelled).",
    ["phase"],
)
MIGRATION_SECONDS = Histogram(
    "kubevisor_controller_migration_duration_seconds",
    "Total time of succeeded migrations (status.totalTimeMs).",
    buckets=LONG_BUCKETS,
)
MIGRATION_DOWNTIME_SECONDS = Histogram(
    "kubevisor_controller_migration_downtime_seconds",
    "Guest downtime of succeeded migrations (status.downtimeMs).",
    buckets=DOWNTIME_BUCKETS,
)


def api_write(verb: str, resource: str) -> None:
    """Count one write the API server accepted."""
    API_WRITES.labels(verb=verb, resource=resource).inc()


def serve(address: str, port: int) -> None:
    """Export on ``address:port`` from a thread of its own (see module docstring)."""
    prometheus_client.start_http_server(port, addr=address)
