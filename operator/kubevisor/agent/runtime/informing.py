"""A label-selected list+watch of the VirtualMachines placed on this node.

Why our own loop instead of kopf: the agent needs a server-side label selector
(``kubevisor.io/node=<me>``) and nothing of kopf's handler bookkeeping; a list+watch with
resourceVersion is the informer pattern in ~100 lines. The cache is the truth the worker
reads from; every change only enqueues the object's key, so bursts coalesce.

- list, remember resourceVersion, watch from it with bookmarks;
- 410 Gone (or any error): back off, re-list (objects that vanished meanwhile are
  reported deleted);
- a full re-list every ``resync`` seconds, enqueuing every key (level-based resync).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from kubevisor.api import groups, kinds

logger = logging.getLogger(__name__)

Key = tuple[str, str]


def key_of(obj: dict[str, Any]) -> Key:
    """(namespace, name) of an object."""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


class VMWatcher:
    """Keeps ``cache`` in sync with the VMs labelled for ``node``; calls ``on_change(key)``
    for every added/modified/deleted object (deleted ones are absent from the cache)."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        node: str,
        on_change: Callable[[Key], None],
        resync: float = 300.0,
        timeout_seconds: int = 240,
    ) -> None:
        self._custom: Any = client.CustomObjectsApi(api)
        self.selector = f"{groups.LABEL_NODE}={node}"
        self.on_change = on_change
        self.resync = resync
        self.timeout_seconds = timeout_seconds
        self.cache: dict[Key, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.relists = 0

    async def _list(self) -> str:
        result = await self._custom.list_cluster_custom_object(
            groups.GROUP, groups.VERSION, kinds.VIRTUALMACHINE.plural, label_selector=self.selector
        )
        fresh = {key_of(item): item for item in result.get("items", [])}
        gone = set(self.cache) - set(fresh)
        self.cache = fresh
        for key in gone:
            self.on_change(key)
        for key in fresh:
            self.on_change(key)
        self.relists += 1
        self.synced.set()
        return str(result["metadata"]["resourceVersion"])

    async def _watch(self, resource_version: str, deadline: float) -> str:
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            stream = watch.Watch()
            timeout = max(1, min(self.timeout_seconds, int(deadline - loop.time())))
            async with stream.stream(
                self._custom.list_cluster_custom_object,
                groups.GROUP,
                groups.VERSION,
                kinds.VIRTUALMACHINE.plural,
                label_selector=self.selector,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
            ) as events:
                async for event in events:
                    kind = event.get("type")
                    obj = event.get("raw_object") or event.get("object")
                    if not isinstance(obj, dict):
                        continue
                    if kind == "ERROR":
                        code = obj.get("code")
                        raise ApiException(status=code, reason=str(obj.get("message")))
                    rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if rv:
                        resource_version = str(rv)
                    if kind == "BOOKMARK":
                        continue
                    key = key_of(obj)
                    if kind == "DELETED":
                        self.cache.pop(key, None)
                    elif is_stale(self.cache.get(key), obj):
                        continue  # our own write already put a newer version in the cache
                    else:
                        self.cache[key] = obj
                    self.on_change(key)
        return resource_version

    async def run(self) -> None:
        """List and watch forever; errors back off (1 s doubling to 30 s) and re-list."""
        loop = asyncio.get_running_loop()
        backoff = 1.0
        while True:
            try:
                rv = await self._list()
                backoff = 1.0
                await self._watch(rv, loop.time() + self.resync)
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                if exc.status == 410:
                    logger.info("watch expired (410); re-listing")
                    continue
                logger.warning("VM watch failed: %s; retrying in %.0fs", exc, backoff)
            except Exception as exc:  # network errors of any kind: back off and re-list
                logger.warning("VM watch failed: %r; retrying in %.0fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


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
