"""The core/v1 Event body both the controller and the agent post about kubevisor objects,
and how both post it: a repeat raises the first Event's count instead of adding another.

One shape in one place: the two sides never import each other, and an Event that names its
object differently depending on who posted it would not show up in ``kubectl describe``.
Which reason carries which type is ``api/eventreasons``.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from kubevisor.api import groups

#: Events about cluster-scoped objects go here (where kubectl looks for Node events).
CLUSTER_EVENT_NAMESPACE: str = "default"
#: Kinds that are not ours, with their apiVersion (the rebalancer posts about Nodes).
CORE_API_VERSIONS: Mapping[str, str] = {"Node": "v1"}

#: Longest message kept (the API server accepts more; a screenful is what a user reads).
MAX_MESSAGE: int = 1024


def body(
    obj: Mapping[str, Any],
    *,
    kind: str,
    type_: str,
    reason: str,
    message: str,
    component: str,
    now: datetime,
    host: str | None = None,
    instance: str | None = None,
) -> dict[str, Any]:
    """A new Event about ``obj`` (a kubevisor object of ``kind``) from ``component``
    (on node ``host`` for the agent; ``instance``, the reporting process, defaults to
    ``host``). Pure apart from the random name suffix. An object
    without a namespace (cluster-scoped: a RebalancePolicy, a Node) gets its Event in
    :data:`CLUSTER_EVENT_NAMESPACE`."""
    meta = obj["metadata"]
    source: dict[str, str] = {"component": component}
    involved: dict[str, Any] = {
        "apiVersion": CORE_API_VERSIONS.get(kind, groups.API_VERSION),
        "kind": kind,
        "name": meta["name"],
        "uid": meta.get("uid"),
    }
    if meta.get("namespace"):
        involved["namespace"] = meta["namespace"]
    out: dict[str, Any] = {
        "metadata": {
            "name": f"{meta['name']}.{uuid.uuid4().hex[:12]}",
            "namespace": meta.get("namespace") or CLUSTER_EVENT_NAMESPACE,
        },
        "involvedObject": involved,
        "type": type_,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "source": source,
        "reportingComponent": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    if host is not None:
        source["host"] = host
    if instance or host:
        out["reportingInstance"] = instance or host
    return out


#: Repeats of one Event within this long become one Event with a count (client-go's
#: EventCorrelator uses the same ten minutes).
REPEAT_WINDOW: timedelta = timedelta(minutes=10)
#: Series remembered per process (oldest forgotten first).
MAX_SERIES: int = 4096

SeriesKey = tuple[str, str, str, str, str, str, str]


@dataclass
class Series:
    """An Event already posted, to bump instead of posting a new one."""

    namespace: str
    name: str
    count: int
    last: datetime


def series_key(body: Mapping[str, Any]) -> SeriesKey:
    """What makes two Events the same one repeated: object, type, reason, message and
    reporter (client-go's ``getEventKey``)."""
    inv = body["involvedObject"]
    return (
        str(inv.get("namespace") or ""),
        str(inv.get("uid") or inv["name"]),
        str(body["type"]),
        str(body["reason"]),
        str(body["message"]),
        str(body.get("reportingComponent") or ""),
        str(body.get("reportingInstance") or ""),
    )


class Aggregator:
    """Turns repeats into a count on the first Event: a VM failing to start every few
    seconds is one Event "x40" in ``kubectl describe``, not forty. Pure apart from its
    memory; each recorder holds one."""

    def __init__(self, *, window: timedelta = REPEAT_WINDOW, size: int = MAX_SERIES) -> None:
        self.window = window
        self.size = size
        self._seen: OrderedDict[SeriesKey, Series] = OrderedDict()

    def repeat(self, body: Mapping[str, Any], now: datetime) -> Series | None:
        """The earlier Event ``body`` repeats, its count already raised (patch it), or None
        (post ``body``; it is remembered as a new series)."""
        key = series_key(body)
        seen = self._seen.get(key)
        if seen is not None and now - seen.last <= self.window:
            seen.count += 1
            seen.last = now
            self._seen.move_to_end(key)
            return seen
        self._seen[key] = Series(body["metadata"]["namespace"], body["metadata"]["name"], 1, now)
        self._seen.move_to_end(key)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return None

    def forget(self, body: Mapping[str, Any]) -> None:
        """The series' Event is gone (expired by the API server): the next repeat posts
        anew."""
        self._seen.pop(series_key(body), None)


def bump(series: Series, now: datetime) -> dict[str, Any]:
    """The merge patch that records one more repeat on ``series``' Event."""
    return {"count": series.count, "lastTimestamp": now}


#: Content type of :func:`bump`'s patch.
MERGE_PATCH: str = "application/merge-patch+json"


class EventsAPI(Protocol):
    """The two calls of kubernetes_asyncio's ``CoreV1Api`` a recorder makes."""

    async def create_namespaced_event(self, namespace: str, body: Any) -> Any: ...

    async def patch_namespaced_event(
        self, name: str, namespace: str, body: Any, **kwargs: Any
    ) -> Any: ...


async def post(
    core: EventsAPI,
    series: Aggregator,
    body: dict[str, Any],
    now: datetime,
    *,
    gone: Callable[[BaseException], bool],
) -> str:
    """Post ``body``, or bump the Event it repeats; the verb written ("create" or
    "patch"). Both recorders go through here, so the controller and the agent aggregate
    alike. ``gone``: the client's "404" test (an expired Event is posted anew)."""
    seen = series.repeat(body, now)
    if seen is not None:
        try:
            await core.patch_namespaced_event(
                seen.name, seen.namespace, bump(seen, now), _content_type=MERGE_PATCH
            )
            return "patch"
        except Exception as exc:
            if not gone(exc):
                raise
            series.forget(body)
            series.repeat(body, now)
    await core.create_namespaced_event(body["metadata"]["namespace"], body)
    return "create"
