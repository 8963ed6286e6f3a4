"""The node's heartbeat: a ``coordination.k8s.io`` Lease renewed every 10 s, carrying the
node's labels, its capacity and its current network segments (see
docs/dev/vm-contract.md, "Nodes").

Why a Lease and annotations instead of a custom Node kind: kubelet does the same, the
controller reads one object per node, and the heartbeat write is tiny. Capacity and
segments are written only when they change, in the same PATCH as a renewal, so a quiet
node costs one small write per interval and nothing else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

logger = logging.getLogger(__name__)

#: Where this node's Lease lives (must match the controller's). The Helm chart sets it to
#: the release namespace; read here only, once at import.
NAMESPACE = os.environ.get("KUBEVISOR_LEASE_NAMESPACE") or "kubevisor-system"
LEASE_DURATION_S = 30
RENEW_INTERVAL_S = 10.0
LABEL_AGENT = "kubevisor.io/agent"
ANNOTATION_CAPACITY = "kubevisor.io/capacity"
ANNOTATION_SEGMENTS = "kubevisor.io/segments"


@dataclasses.dataclass(frozen=True)
class Capacity:
    """What the node offers, as the controller's placement reads it."""

    cpu: int
    memory_bytes: int
    gpus: int = 0
    networks: tuple[str, ...] = ("default",)
    shared_storage: str | None = None
    migration_uri: str | None = None
    address: str | None = None

    def to_json(self) -> str:
        """The annotation value; keys sorted so equal capacities give equal strings."""
        return json.dumps(
            {
                "cpu": self.cpu,
                "memoryBytes": self.memory_bytes,
                "gpus": self.gpus,
                "networks": sorted(self.networks),
                "sharedStorage": self.shared_storage,
                "migrationURI": self.migration_uri,
                "address": self.address,
            },
            sort_keys=True,
            separators=(",", ":"),
        )


def micro_time(moment: datetime) -> str:
    """metav1.MicroTime wire format."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def segments_json(segments: frozenset[str] | set[str]) -> str:
    """The segments annotation value (sorted JSON list)."""
    return json.dumps(sorted(segments), separators=(",", ":"))


def lease_body(
    *,
    node: str,
    labels: dict[str, str],
    capacity: Capacity,
    segments: frozenset[str],
    now: datetime,
) -> dict[str, Any]:
    """The full Lease object for creation (pure)."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node,
            "namespace": NAMESPACE,
            "labels": {**labels, LABEL_AGENT: "true"},
            "annotations": {
                ANNOTATION_CAPACITY: capacity.to_json(),
                ANNOTATION_SEGMENTS: segments_json(segments),
            },
        },
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": LEASE_DURATION_S,
            "acquireTime": micro_time(now),
            "renewTime": micro_time(now),
        },
    }


def renewal_patch(
    *,
    current: dict[str, Any],
    node: str,
    labels: dict[str, str],
    capacity: Capacity,
    segments: frozenset[str],
    now: datetime,
) -> dict[str, Any]:
    """A merge patch renewing the Lease; metadata only where it differs (pure)."""
    patch: dict[str, Any] = {
        "spec": {
            "renewTime": micro_time(now),
            "holderIdentity": node,
            "leaseDurationSeconds": LEASE_DURATION_S,
        }
    }
    metadata = current.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    wanted_annotations = {
        ANNOTATION_CAPACITY: capacity.to_json(),
        ANNOTATION_SEGMENTS: segments_json(segments),
    }
    changed_annotations = {k: v for k, v in wanted_annotations.items() if annotations.get(k) != v}
    wanted_labels = {**labels, LABEL_AGENT: "true"}
    current_labels = metadata.get("labels") or {}
    changed_labels = {k: v for k, v in wanted_labels.items() if current_labels.get(k) != v}
    if changed_annotations or changed_labels:
        patch["metadata"] = {}
        if changed_annotations:
            patch["metadata"]["annotations"] = changed_annotations
        if changed_labels:
            patch["metadata"]["labels"] = changed_labels
    return patch


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
        capacity: Capacity,
        interval: float = RENEW_INTERVAL_S,
    ) -> None:
        self._api = api
        # Typed loosely: we pass plain dicts and private options the stubs do not know.
        self._coordination: Any = client.CoordinationV1Api(api)
        self._core: Any = client.CoreV1Api(api)
        self.node = node
        self.labels = dict(labels)
        self.capacity = capacity
        self.interval = interval
        self.segments: frozenset[str] = frozenset()
        self._current: dict[str, Any] | None = None
        self._wake = asyncio.Event()
        self.renewals = 0

    def set_segments(self, segments: frozenset[str]) -> None:
        """Publish a new segment set at once (if it changed)."""
        if segments != self.segments:
            self.segments = segments
            self._wake.set()

    async def _ensure_namespace(self) -> None:
        """Create the Lease namespace in a bare dev cluster. Installed by Helm, the agent's
        account may not create namespaces (least privilege) and the namespace exists, so a
        403 is not an error: creating the Lease itself says whether it is there."""
        try:
            await self._core.create_namespace({"metadata": {"name": NAMESPACE}})
        except ApiException as exc:
            if exc.status not in (403, 409):
                raise

    async def renew_once(self, *, now: datetime | None = None) -> None:
        """Create the Lease if missing, else renew it (one write either way)."""
        now = now or datetime.now(UTC)
        if self._current is None:
            try:
                lease = await self._coordination.read_namespaced_lease(self.node, NAMESPACE)
                self._current = self._api.sanitize_for_serialization(lease)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                await self._ensure_namespace()
                body = lease_body(
                    node=self.node,
                    labels=self.labels,
                    capacity=self.capacity,
                    segments=self.segments,
                    now=now,
                )
                try:
                    await self._coordination.create_namespaced_lease(NAMESPACE, body)
                    self._current = body
                    self.renewals += 1
                    return
                except ApiException as exc2:
                    if exc2.status != 409:
                        raise
                    self._current = {}
        patch = renewal_patch(
            current=self._current or {},
            node=self.node,
            labels=self.labels,
            capacity=self.capacity,
            segments=self.segments,
            now=now,
        )
        try:
            lease = await self._coordination.patch_namespaced_lease(
                self.node,
                NAMESPACE,
                patch,
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status == 404:
                self._current = None  # deleted under us: recreate next time
            raise
        self._current = self._api.sanitize_for_serialization(lease)
        self.renewals += 1

    async def run(self) -> None:
        """Renew forever, every ``interval`` seconds or at once when segments change."""
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
