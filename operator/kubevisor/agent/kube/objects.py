"""Reads and small writes on single objects: get, finalizer patches, Secret values.

Finalizers are changed with a JSON patch that first *tests* the list it edits, so two
writers never drop each other's finalizer; when the object is gone or changed under us
(404/409/422) the patch is skipped and the next pass decides again.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kubevisor.agent import metrics
from kubevisor.api import groups

logger = logging.getLogger(__name__)

JSON_PATCH = "application/json-patch+json"


def add_finalizer_ops(finalizers: list[str] | None, finalizer: str) -> list[dict[str, Any]]:
    """JSON patch adding ``finalizer`` (pure; empty when it is there already)."""
    if finalizers and finalizer in finalizers:
        return []
    if finalizers:
        return [
            {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
            {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer},
        ]
    return [{"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}]


def remove_finalizer_ops(finalizers: list[str] | None, finalizer: str) -> list[dict[str, Any]]:
    """JSON patch removing ``finalizer`` (pure; empty when it is not there)."""
    finalizers = finalizers or []
    if finalizer not in finalizers:
        return []
    path = f"/metadata/finalizers/{finalizers.index(finalizer)}"
    return [{"op": "test", "path": path, "value": finalizer}, {"op": "remove", "path": path}]


async def list_cluster_objects(api: client.ApiClient, plural: str) -> list[dict[str, Any]]:
    """Every object of a cluster-scoped kubevisor kind (e.g. storagebackends)."""
    custom: Any = client.CustomObjectsApi(api)
    listed = await custom.list_cluster_custom_object(groups.GROUP, groups.VERSION, plural)
    return list(listed.get("items") or [])


class CustomObjects:
    """Namespaced objects of one kubevisor kind."""

    def __init__(self, api: client.ApiClient, plural: str) -> None:
        self._custom: Any = client.CustomObjectsApi(api)
        self.plural = plural

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            obj: dict[str, Any] = await self._custom.get_namespaced_custom_object(
                groups.GROUP, groups.VERSION, namespace, self.plural, name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None
        return obj

    async def add_finalizer(self, obj: dict[str, Any], finalizer: str) -> None:
        meta = obj.get("metadata") or {}
        await self._patch_finalizers(obj, add_finalizer_ops(meta.get("finalizers"), finalizer))

    async def remove_finalizer(self, obj: dict[str, Any], finalizer: str) -> None:
        meta = obj.get("metadata") or {}
        await self._patch_finalizers(obj, remove_finalizer_ops(meta.get("finalizers"), finalizer))

    async def _patch_finalizers(self, obj: dict[str, Any], ops: list[dict[str, Any]]) -> None:
        if not ops:
            return
        meta = obj["metadata"]
        try:
            await self._custom.patch_namespaced_custom_object(
                groups.GROUP,
                groups.VERSION,
                meta["namespace"],
                self.plural,
                meta["name"],
                ops,
                _content_type=JSON_PATCH,
            )
            metrics.api_write("patch", self.plural)
        except ApiException as exc:
            if exc.status in (404, 409, 422):  # gone or changed under us: next pass decides
                logger.info(
                    "%s/%s: finalizer patch skipped (%s)",
                    meta["namespace"],
                    meta["name"],
                    exc.status,
                )
                return
            raise


class SecretNotFound(LookupError):
    """The named Secret does not exist (the message names it)."""


class Secrets:
    """Values of keys in Secrets (a VM's VNC password)."""

    def __init__(self, api: client.ApiClient) -> None:
        self._core: Any = client.CoreV1Api(api)

    async def read(self, namespace: str, name: str, key: str) -> str | None:
        """The decoded value of ``key``, None when the Secret has no such key (a missing
        Secret raises :class:`SecretNotFound`; other API errors propagate)."""
        try:
            secret = await self._core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise SecretNotFound(f"Secret {namespace}/{name} does not exist") from None
            raise
        raw = (secret.data or {}).get(key)
        return base64.b64decode(raw).decode() if raw else None
