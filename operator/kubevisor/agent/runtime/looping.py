"""A work loop: a queue of keys, a few workers, coalescing, delayed retries and a tick.

Why one loop for every kind: the guarantees are the same wherever the agent reconciles
something — a key is never handled by two workers at once, a wake-up for a key that is
already queued is dropped, a wake-up for a key being handled runs it once more
afterwards, a failed pass is retried later, and every known key is looked at every
``tick`` seconds even without events (level-based: events are hints, not the truth).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from kubevisor.agent.runtime.informing import Key

logger = logging.getLogger(__name__)

Handler = Callable[[Key], Awaitable[None]]


class WorkLoop:
    """Runs ``handler(key)`` for enqueued keys on ``workers`` tasks (see module docstring).

    ``retry``: seconds before a key whose pass raised is handled again.
    """

    def __init__(self, handler: Handler, *, workers: int = 4, retry: float = 5.0) -> None:
        self.handler = handler
        self.workers = workers
        self.retry = retry
        self.queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self.busy: set[Key] = set()
        """Keys a worker is handling right now."""
        self._again: set[Key] = set()

    def enqueue(self, key: Key) -> None:
        """Ask for a pass over ``key`` (coalesced with pending ones)."""
        if key in self.busy:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self.queue.put_nowait(key)

    def enqueue_later(self, key: Key, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.enqueue, key)

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            self._queued.discard(key)
            self.busy.add(key)
            try:
                await self.handler(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s/%s: reconcile failed; retrying", *key)
                self.enqueue_later(key, self.retry)
            finally:
                self.busy.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.enqueue(key)

    async def tick(self, every: float, keys: Callable[[], Iterable[Key]]) -> None:
        """Enqueue every key of ``keys()`` each ``every`` seconds, forever."""
        while True:
            await asyncio.sleep(every)
            for key in list(keys()):
                self.enqueue(key)

    async def run(self) -> None:
        """Run the workers until cancelled."""
        async with asyncio.TaskGroup() as group:
            for _ in range(self.workers):
                group.create_task(self._worker())
