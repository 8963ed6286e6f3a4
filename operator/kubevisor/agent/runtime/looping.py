"""A work loop: a queue of keys, a few workers, coalescing, delayed retries and a tick.

Why one loop for every kind: the guarantees are the same wherever the agent reconciles
something — a key is never handled by two workers at once, a wake-up for a key that is
already queued is dropped, a wake-up for a key being handled runs it once more
afterwards, a failed pass is retried later, and every known key is looked at every
``tick`` seconds even without events (level-based: events are hints, not the truth).

Failures back off per key (:mod:`kubevisor.agent.runtime.backoff`: 10 s doubling to
5 min). A pass fails either by raising (an unexpected error: the traceback is logged on
the first failure only, one line after) or by the handler calling :meth:`WorkLoop.failed`
(an expected refusal it has already reported as a condition). While a key waits out its
backoff, wake-ups (the watch event of our own status write, the tick) are dropped unless
the key's fingerprint (what the pass acts on) changed — this is what keeps a refused
object from being retried in a storm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable

from kubevisor.agent import metrics
from kubevisor.agent.runtime import backoff
from kubevisor.agent.runtime.informing import Key

logger = logging.getLogger(__name__)

Handler = Callable[[Key], Awaitable[None]]


class WorkLoop:
    """Runs ``handler(key)`` for enqueued keys on ``workers`` tasks (see module docstring).

    ``retry``: seconds before the first retry of a failed key (doubling to ``cap``);
    ``fingerprint``: what a key's pass acts on (a change resets its backoff); ``kind``:
    the metrics label of its passes (default: the handler's package, ``vms`` for
    ``kubevisor.agent.vms.realizing``).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        workers: int = 4,
        retry: float = backoff.FIRST,
        cap: float = backoff.CAP,
        fingerprint: Callable[[Key], Hashable] = lambda _key: None,
        kind: str | None = None,
    ) -> None:
        self.handler = handler
        self.kind = kind or _package_of(handler)
        self.workers = workers
        self.retry = retry
        self.fingerprint = fingerprint
        self.backoff: backoff.Backoff[Key] = backoff.Backoff(first=retry, cap=cap)
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

    def failed(self, key: Key) -> float:
        """Record an expected failure of ``key``'s pass (already reported) and retry it
        after its backoff; the seconds until then."""
        loop = asyncio.get_running_loop()
        wait = self.backoff.fail(key, self.fingerprint(key), loop.time())
        loop.call_later(wait, self._due, key)
        return wait

    def succeeded(self, key: Key) -> None:
        """Reset ``key``'s backoff (for a VM: it reached Running)."""
        self.backoff.reset(key)

    def _due(self, key: Key) -> None:
        entry = self.backoff.entries.get(key)
        if entry is not None and asyncio.get_running_loop().time() >= entry.due - 0.1:
            entry.due = 0.0  # due: the next pass runs even with the same fingerprint
        self.enqueue(key)

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            self._queued.discard(key)
            now = asyncio.get_running_loop().time()
            if self.backoff.holding(key, self.fingerprint(key), now):
                continue  # waiting out a backoff; the scheduled retry runs it
            self.busy.add(key)
            started = time.monotonic()
            try:
                await self.handler(key)
                self._count("done", started)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._count("error", started)
                first = self.backoff.failures(key) == 0
                wait = self.failed(key)
                if first:
                    logger.exception("%s/%s: reconcile failed; retrying in %.0fs", *key, wait)
                else:
                    logger.warning(
                        "%s/%s: reconcile failed again (%d times): %s; retrying in %.0fs",
                        *key,
                        self.backoff.failures(key),
                        exc,
                        wait,
                    )
            finally:
                self.busy.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.enqueue(key)

    def _count(self, outcome: str, started: float) -> None:
        metrics.RECONCILES.labels(kind=self.kind, outcome=outcome).inc()
        metrics.RECONCILE_SECONDS.labels(kind=self.kind).observe(time.monotonic() - started)

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


def _package_of(handler: Handler) -> str:
    """``vms`` for a handler defined in ``kubevisor.agent.vms.<module>`` (pure)."""
    parts = str(getattr(handler, "__module__", "") or "").split(".")
    return parts[2] if len(parts) > 3 and parts[:2] == ["kubevisor", "agent"] else "work"
