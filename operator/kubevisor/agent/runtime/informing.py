"""A generic informer: list + watch of one kind through one server-side selector.

Why our own loop instead of kopf: the agent needs server-side label and field selectors
(``kubevisor.io/node=<me>``) and nothing of kopf's handler bookkeeping; a list+watch with
resourceVersion is the informer pattern in ~100 lines. The cache is the truth the worker
reads from; every change only calls ``on_change(key)``, so bursts coalesce in the queue.

One class serves every role: the VMs placed on this node, the VMs for which this node is
a migration target, every VRF; each is an :class:`Informer` over a :class:`Source` (the
Kubernetes adapter, :mod:`kubevisor.agent.kube.watches`) bound to a kind and a selector.

- list, remember resourceVersion, watch from it with bookmarks;
- :class:`Expired` (410 Gone) re-lists at once; any other error backs off (1 s doubling
  to 30 s) and re-lists (objects that vanished meanwhile are reported deleted);
- a full re-list every ``resync`` seconds, reporting every key (level-based resync);
- an event older than what the cache holds (:func:`is_stale`) is dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from kubevisor.agent.runtime import backoff

logger = logging.getLogger(__name__)

Key = tuple[str, str]


class Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): re-list without backing off."""


@dataclasses.dataclass(frozen=True)
class Event:
    """One watch event: ``ADDED``, ``MODIFIED``, ``DELETED`` or ``BOOKMARK``."""

    type: str
    obj: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Listing:
    """A list response: the items and the resourceVersion to watch from."""

    items: list[dict[str, Any]]
    resource_version: str


class Source(Protocol):
    """List and watch one kind through one selector (implemented by the kube adapter)."""

    @property
    def description(self) -> str:
        """What is watched, for log lines (``virtualmachines kubevisor.io/node=n1``)."""
        ...

    async def list(self) -> Listing: ...

    def watch(
        self, resource_version: str, *, timeout_seconds: int
    ) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        """Events after ``resource_version``; raises :class:`Expired` on 410."""
        ...


def key_of(obj: dict[str, Any]) -> Key:
    """(namespace, name) of an object ("" namespace for cluster-scoped ones)."""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


class Informer:
    """Keeps ``cache`` in sync with what ``source`` selects; calls ``on_change(key)`` for
    every added/modified/deleted object (deleted ones are absent from the cache)."""

    def __init__(
        self,
        source: Source,
        *,
        on_change: Callable[[Key], None],
        resync: float = 300.0,
        timeout_seconds: int = 240,
    ) -> None:
        self.source = source
        self.on_change = on_change
        self.resync = resync
        self.timeout_seconds = timeout_seconds
        self.cache: dict[Key, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.relists = 0

    async def _list(self) -> str:
        listing = await self.source.list()
        fresh = {key_of(item): item for item in listing.items}
        gone = set(self.cache) - set(fresh)
        self.cache = fresh
        for key in gone:
            self.on_change(key)
        for key in fresh:
            self.on_change(key)
        self.relists += 1
        self.synced.set()
        return listing.resource_version

    async def _watch(self, resource_version: str, deadline: float) -> str:
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            timeout = max(1, min(self.timeout_seconds, int(deadline - loop.time())))
            async with self.source.watch(resource_version, timeout_seconds=timeout) as events:
                async for event in events:
                    rv = (event.obj.get("metadata") or {}).get("resourceVersion")
                    if rv:
                        resource_version = str(rv)
                    if event.type == "BOOKMARK":
                        continue
                    key = key_of(event.obj)
                    if event.type == "DELETED":
                        self.cache.pop(key, None)
                    elif is_stale(self.cache.get(key), event.obj):
                        continue  # our own write already put a newer version in the cache
                    else:
                        self.cache[key] = event.obj
                    self.on_change(key)
        return resource_version

    async def run(self) -> None:
        """List and watch forever; errors back off (1 s doubling to 5 min) and re-list.

        The backoff resets only after a watch ran to its resync deadline: a list that
        succeeds followed by a watch that is refused (RBAC) is still a failure, so a
        forbidden watch does not re-list once a second."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            try:
                rv = await self._list()
                await self._watch(rv, loop.time() + self.resync)
                failures = 0
                continue
            except asyncio.CancelledError:
                raise
            except Expired:
                logger.info("%s: watch expired (410); re-listing", self.source.description)
                continue
            except Exception as exc:  # API and network errors of any kind: back off, re-list
                failures += 1
                wait = backoff.delay(failures, first=1.0)
                logger.warning(
                    "%s: watch failed: %s; retrying in %.0fs",
                    self.source.description,
                    describe_error(exc),
                    wait,
                )
                await asyncio.sleep(wait)


def describe_error(exc: BaseException) -> str:
    """``exc`` in one log line, with the HTTP status and reason an API client's exception
    carries (pure). Why: the repr of ``ApiException`` is ``ApiException()``, so a watch the
    agent's role forbids (403 Forbidden) would be invisible in the log while the informer
    quietly falls back to re-listing."""
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
    if status is None and reason is None:
        return repr(exc)
    return f"{type(exc).__name__}({' '.join(str(p) for p in (status, reason) if p is not None)})"


def is_stale(cached: dict[str, Any] | None, incoming: dict[str, Any]) -> bool:
    """Whether ``incoming`` is an older version of the same object than ``cached``.

    The agent puts the object its own status write returned into the cache, and a watch
    event queued before that write can arrive after it; applying it would make the next
    pass act on (and re-apply) a status without the agent's own fields. resourceVersions
    are opaque by contract, but one API server's are etcd revisions: compare them as
    integers when both parse, and treat anything else as not stale.
    """
    if cached is None:
        return False
    old_meta, new_meta = cached.get("metadata") or {}, incoming.get("metadata") or {}
    if old_meta.get("uid") != new_meta.get("uid"):
        return False
    try:
        return int(str(new_meta.get("resourceVersion"))) < int(str(old_meta.get("resourceVersion")))
    except (TypeError, ValueError):
        return False
