"""The controller's one event recorder: Events users read, posted off the reconcile path.

``post`` never waits for the API server: Events go into a queue that one task drains
through the shared client, so a placement burst is not slowed by one extra write per VM
(kopf's own posting works the same way). Before ``start`` (unit tests) and after
``stop`` an Event is only logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from kubevisor.api import eventreasons
from kubevisor.controller.kube import client as kube

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """One Event about one object."""

    obj: dict[str, Any]
    kind: str
    type_: str
    """Normal or Warning."""
    reason: str
    message: str


class Recorder:
    """Queues Events and posts them in order with the shared client."""

    def __init__(self) -> None:
        self._client: kube.Kube | None = None
        self._queue: asyncio.Queue[Event] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, client: kube.Kube) -> None:
        """Post through ``client`` from now on; call inside the running loop."""
        self._client = client
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._drain())

    async def stop(self) -> None:
        """Post what is queued (briefly), then stop posting."""
        if self._queue is not None and self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout=2.0)
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._client = self._queue = self._task = None

    def post(
        self, obj: dict[str, Any], *, kind: str, type_: str, reason: str, message: str
    ) -> None:
        """An Event on ``obj`` (a kubevisor object of ``kind``); its type is the one
        ``api/eventreasons`` gives ``reason`` (``type_`` only for a reason it lacks)."""
        type_ = eventreasons.type_of(reason, default=type_)
        if self._queue is None:
            log.info("event %s %s: %s", type_, reason, message)
            return
        self._queue.put_nowait(Event(obj, kind, type_, reason, message))

    async def _drain(self) -> None:
        assert self._queue is not None
        while True:
            event = await self._queue.get()
            try:
                if self._client is not None:
                    await self._client.create_event(
                        event.obj,
                        kind=event.kind,
                        type_=event.type_,
                        reason=event.reason,
                        message=event.message,
                    )
            except Exception as exc:  # an Event lost is logged, never a reconcile failed
                name = (event.obj.get("metadata") or {}).get("name")
                log.warning("could not post event %s on %s: %s", event.reason, name, exc)
            finally:
                self._queue.task_done()
