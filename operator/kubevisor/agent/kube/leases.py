"""The node's heartbeat: its ``coordination.k8s.io`` Lease renewed every 10 s, carrying
the node's labels, its capacity and its current network segments.

What the Lease says and how it is built is the node contract in ``api/nodes`` (the
controller parses it with the same module); this is only the writer. Capacity and
segments are written only when they change, in the same PATCH as a renewal, so a quiet
node costs one small write per interval and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kubevisor.agent import metrics, rttprobing
from kubevisor.api import nodes

logger = logging.getLogger(__name__)

RENEW_INTERVAL_S = 10.0
#: How often the agent measures the round-trip time to every peer's libvirtd.
PROBE_INTERVAL_S = 30.0


class Heartbeat:
    """Keeps the node's Lease renewed; :meth:`set_segments` publishes a new segment set.

    ``run`` never returns on API errors: it logs and retries at the next interval, since
    a missed renewal only matters after ``leaseDurationSeconds``.
    """

    def __init__(
        self,
        api: client.ApiClient,
        *,
        node: str,
        labels: dict[str, str],
        capacity: nodes.Capacity,
        interval: float = RENEW_INTERVAL_S,
        duration_s: int = nodes.LEASE_DURATION_S,
    ) -> None:
        self._api = api
        # Typed loosely: we pass plain dicts and private options the stubs do not know.
        self._coordination: Any = client.CoordinationV1Api(api)
        self._core: Any = client.CoreV1Api(api)
        self.node = node
        self.labels = dict(labels)
        self.capacity = capacity
        self.duration_s = duration_s
        """``leaseDurationSeconds`` written (a short one for tests of node loss); the
        renewal interval is at most a third of it."""
        self.interval = min(interval, duration_s / 3)
        self.segments: frozenset[str] = frozenset()
        self.rtts: dict[str, float] | None = None
        """RTTs to peers as last published; None until the first probe round."""
        self._current: dict[str, Any] | None = None
        self._wake = asyncio.Event()
        self.renewals = 0

    def set_segments(self, segments: frozenset[str]) -> None:
        """Publish a new segment set at once (if it changed)."""
        if segments != self.segments:
            self.segments = segments
            self._wake.set()

    def set_rtts(self, rtts: dict[str, float]) -> None:
        """Publish new peer RTTs at once (if they changed)."""
        if rtts != self.rtts:
            self.rtts = dict(rtts)
            self._wake.set()

    def set_storage_backends(self, reached: dict[str, str]) -> None:
        """Publish the StorageBackends this node reaches (name -> type) if they changed."""
        if dict(self.capacity.storage_backends) != reached:
            self.capacity = self.capacity.model_copy(update={"storage_backends": dict(reached)})
            self._wake.set()

    async def peers(self) -> list[nodes.NodeLease]:
        """Every other agent's node, as its Lease describes it."""
        leases = await self._coordination.list_namespaced_lease(
            nodes.LEASE_NAMESPACE, label_selector=f"{nodes.LABEL_AGENT}=true"
        )
        raw = self._api.sanitize_for_serialization(leases).get("items") or []
        return [lease for lease in map(nodes.parse, raw) if lease.name != self.node]

    async def probe_peers_once(self) -> None:
        """One round: list the peers, time a connect to each one's libvirtd (asyncio,
        never blocking the loop) and publish what :func:`rttprobing.report` says."""
        endpoints = {
            peer.name: endpoint
            for peer in await self.peers()
            if (endpoint := rttprobing.peer_endpoint(peer.capacity)) is not None
        }
        measured = await rttprobing.measure(endpoints)
        self.set_rtts(rttprobing.report(self.rtts or {}, measured))

    async def probe_peers(self, interval: float = PROBE_INTERVAL_S) -> None:
        """Probe forever, every ``interval`` seconds; errors are logged and retried."""
        while True:
            try:
                await self.probe_peers_once()
            except (TimeoutError, ApiException, OSError) as exc:
                logger.warning("RTT probing from %s failed: %s", self.node, exc)
            except Exception:
                logger.exception("RTT probing from %s failed", self.node)
            await asyncio.sleep(interval)

    async def _ensure_namespace(self) -> None:
        """Create the Lease namespace in a bare dev cluster. Installed by Helm, the agent's
        account may not create namespaces (least privilege) and the namespace exists, so a
        403 is not an error: creating the Lease itself says whether it is there."""
        try:
            await self._core.create_namespace({"metadata": {"name": nodes.LEASE_NAMESPACE}})
            metrics.api_write("create", "namespaces")
        except ApiException as exc:
            if exc.status not in (403, 409):
                raise

    async def renew_once(self, *, now: datetime | None = None) -> None:
        """Create the Lease if missing, else renew it (one write either way)."""
        now = now or datetime.now(UTC)
        if self._current is None:
            try:
                lease = await self._coordination.read_namespaced_lease(
                    self.node, nodes.LEASE_NAMESPACE
                )
                self._current = self._api.sanitize_for_serialization(lease)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                await self._ensure_namespace()
                body = nodes.lease_body(
                    node=self.node,
                    labels=self.labels,
                    capacity=self.capacity,
                    segments=self.segments,
                    now=now,
                    rtts=self.rtts,
                    duration_s=self.duration_s,
                )
                try:
                    await self._coordination.create_namespaced_lease(nodes.LEASE_NAMESPACE, body)
                    metrics.api_write("create", "leases")
                    self._current = body
                    self.renewals += 1
                    return
                except ApiException as exc2:
                    if exc2.status != 409:
                        raise
                    self._current = {}
        patch = nodes.renewal_patch(
            current=self._current or {},
            node=self.node,
            labels=self.labels,
            capacity=self.capacity,
            segments=self.segments,
            now=now,
            rtts=self.rtts,
            duration_s=self.duration_s,
        )
        try:
            lease = await self._coordination.patch_namespaced_lease(
                self.node,
                nodes.LEASE_NAMESPACE,
                patch,
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status == 404:
                self._current = None  # deleted under us: recreate next time
            raise
        metrics.api_write("patch", "leases")
        self._current = self._api.sanitize_for_serialization(lease)
        self.renewals += 1

    async def run(self) -> None:
        """Renew forever, every ``interval`` seconds or at once when segments or RTTs change."""
        while True:
            try:
                await self.renew_once()
            except (TimeoutError, ApiException, OSError) as exc:
                logger.warning("lease renewal for %s failed: %s", self.node, exc)
            except Exception:
                logger.exception("lease renewal for %s failed", self.node)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            except TimeoutError:
                pass
