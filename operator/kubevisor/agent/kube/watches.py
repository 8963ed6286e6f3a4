"""List and watch one kubevisor kind through server-side selectors (the informer's Source).

The selectors are applied by the API server, so an agent only ever receives the objects
of its role (``kubevisor.io/node=<me>``, a migration target label, ...). Watch ``ERROR``
events become exceptions here: 410 Gone is :class:`informing.Expired` (re-list at once),
anything else an ``ApiException`` (the informer backs off).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from kubevisor.agent.runtime import informing
from kubevisor.api import groups


class ListWatch:
    """List+watch of ``plural`` (cluster-wide) narrowed by label and field selectors."""

    def __init__(
        self,
        api: client.ApiClient,
        plural: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> None:
        self._custom: Any = client.CustomObjectsApi(api)
        self.plural = plural
        self.label_selector = label_selector
        self.field_selector = field_selector

    @property
    def description(self) -> str:
        selectors = [s for s in (self.label_selector, self.field_selector) if s]
        return " ".join([self.plural, *selectors])

    def _selectors(self) -> dict[str, str]:
        out = {}
        if self.label_selector:
            out["label_selector"] = self.label_selector
        if self.field_selector:
            out["field_selector"] = self.field_selector
        return out

    async def list(self) -> informing.Listing:
        with _expired_on_410():
            result = await self._custom.list_cluster_custom_object(
                groups.GROUP, groups.VERSION, self.plural, **self._selectors()
            )
        return informing.Listing(
            items=list(result.get("items") or []),
            resource_version=str(result["metadata"]["resourceVersion"]),
        )

    @asynccontextmanager
    async def watch(
        self, resource_version: str, *, timeout_seconds: int
    ) -> AsyncIterator[AsyncIterator[informing.Event]]:
        stream = watch.Watch()
        async with stream.stream(
            self._custom.list_cluster_custom_object,
            groups.GROUP,
            groups.VERSION,
            self.plural,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_seconds,
            **self._selectors(),
        ) as raw:
            yield _events(raw)


@contextmanager
def _expired_on_410() -> Iterator[None]:
    try:
        yield
    except ApiException as exc:
        if exc.status == 410:
            raise informing.Expired(str(exc.reason)) from exc
        raise


async def _events(raw: AsyncIterator[dict[str, Any]]) -> AsyncIterator[informing.Event]:
    with _expired_on_410():
        async for event in raw:
            parsed = _event(event)
            if parsed is not None:
                yield parsed


def _event(event: dict[str, Any]) -> informing.Event | None:
    """An event as the informer takes it; None for one without an object."""
    kind = str(event.get("type"))
    obj = event.get("raw_object") or event.get("object")
    if not isinstance(obj, dict):
        return None
    if kind == "ERROR":
        raise ApiException(status=obj.get("code"), reason=str(obj.get("message")))
    return informing.Event(type=kind, obj=obj)
