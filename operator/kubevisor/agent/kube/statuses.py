"""Status writes: server-side apply of the agent's own fields, per-node merge patches.

Why SSA with the full set of our fields: the controller owns other fields and condition
types of the same status; applying our complete set each time lets the API server merge
the two without either side reading-modifying-writing, and a field we stop sending is
removed (we own it). Whether a write is needed at all is the caller's (pure) decision.

Why a merge patch of ``status.nodes.<node>`` for per-node entries: many agents write one
object, each only its own key, so they never fight and the controller's applied fields
stay untouched.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kubevisor.agent import metrics
from kubevisor.api import groups

logger = logging.getLogger(__name__)

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"


async def _patch_status(
    custom: Any,
    plural: str,
    namespace: str,
    name: str,
    body: dict[str, Any],
    **options: Any,
) -> dict[str, Any] | None:
    """Patch the status subresource; None when the object is gone (404)."""
    try:
        result: dict[str, Any] = await custom.patch_namespaced_custom_object_status(
            groups.GROUP, groups.VERSION, namespace, plural, name, body, **options
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    metrics.api_write("apply" if options.get("_content_type") == APPLY_PATCH else "patch",
                      f"{plural}/status")  # fmt: skip
    return result


class StatusWriter:
    """Applies status to objects of one kind as ``field_manager``; counts writes
    (benchmarks and tests read ``writes``)."""

    def __init__(
        self, api: client.ApiClient, *, kind: str, plural: str, field_manager: str
    ) -> None:
        self._custom: Any = client.CustomObjectsApi(api)
        self.kind = kind
        self.plural = plural
        self.field_manager = field_manager
        self.writes = 0

    async def apply(
        self, *, namespace: str, name: str, own: dict[str, Any]
    ) -> dict[str, Any] | None:
        """SSA ``own`` onto the status subresource.

        Returns the object as the server has it after the write, or None when the object
        is gone.
        """
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": self.kind,
            "metadata": {"name": name, "namespace": namespace},
            "status": own,
        }
        result = await _patch_status(
            self._custom,
            self.plural,
            namespace,
            name,
            body,
            field_manager=self.field_manager,
            force=True,
            _content_type=APPLY_PATCH,
        )
        if result is None:
            return None
        self.writes += 1
        logger.info("%s/%s: status phase=%s", namespace, name, own.get("phase"))
        return result


class NodeEntryWriter:
    """Writes one node's entry ``status.nodes.<node>`` of objects of one kind."""

    def __init__(self, api: client.ApiClient, *, plural: str, node: str) -> None:
        self._custom: Any = client.CustomObjectsApi(api)
        self.plural = plural
        self.node = node
        self.field_manager = f"kubevisor-agent-{node}"[:128]

    async def patch(self, namespace: str, name: str, entry: dict[str, Any] | None) -> None:
        """Set (or, with None, delete) this node's entry; a vanished object is no error."""
        body = {"status": {"nodes": {self.node: entry}}}
        await _patch_status(
            self._custom,
            self.plural,
            namespace,
            name,
            body,
            field_manager=self.field_manager,
            _content_type=MERGE_PATCH,
        )
