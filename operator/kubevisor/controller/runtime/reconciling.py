"""Per-object serialised reconciles, retried, with a resync for objects that wait.

Every kind reconciles the same way: an event (or a dependency's change) asks for a pass
over one key; passes over one key never overlap; a pass that fails on a conflict or an
API error is retried a few times; a key whose pass says it waits for something outside
the object (a node Lease, capacity, another object) is looked at again every
``resync_seconds``. Passes are level-based, so requests for a key that arrive while a
pass for it is still waiting to start are folded into that pass: it reads the newest
object anyway.

A pass need not re-read its object when the watch just delivered it: ``offer`` hands
the watch's body to the next pass over that key, which takes it with ``delivered``
(once; a newer offer replaces an older one). Safe because (1) every write a pass makes
is guarded by the version it read (server-side apply or patch with that
``resourceVersion``), so a pass that decided on a body older than the server's copy
cannot write: the API server refuses with 409, the offer is dropped and the retry
re-reads with a GET; (2) a pass that writes nothing on an old body leaves nothing
wrong behind, because the change that made it old comes through the same watch as its
own event and brings another pass with the newer body; (3) resyncs, retries after
errors and wake-ups by other objects (``spawn``) find no offer and GET the newest
object, as before. The watch body saves one GET per event: the read that starts a pass
was the largest share of the controller's time at a 500-VM burst (bench/README.md).

A kind whose decisions span all its objects (VRFs: conflicts, table allocation) uses
one key for the whole set.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kubevisor.controller import metrics
from kubevisor.controller.kube import client as kube

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(namespace, name), or any pair a kind chooses for a set of objects."""

RETRIES = 5


class Outcome(enum.Enum):
    """What one pass says about its key."""

    DONE = "done"
    """Converged; the next event brings it back."""
    WAIT = "wait"
    """Waiting for something outside the object: look again at the next resync."""
    GONE = "gone"
    """The object no longer exists (or is being deleted): forget the key."""


Pass = Callable[[Key], Awaitable[Outcome]]


@dataclass
class _Slot:
    """Serialises the passes over one key while anyone uses it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: bool = False
    """A pass is waiting for the lock and has not read the object yet."""
    users: int = 0


class Reconciler:
    """One kind's reconcile loop over keys (see module docstring)."""

    def __init__(
        self, kind: str, once: Pass, *, resync_seconds: float, backoff: float = 0.5
    ) -> None:
        self.kind = kind
        self._once = once
        self.resync_seconds = resync_seconds
        self.backoff = backoff
        """Seconds before the n-th retry after an error: n * backoff (conflicts: none)."""
        self.waiting: set[Key] = set()
        """Keys the resync looks at again."""
        self._slots: dict[Key, _Slot] = {}
        self._offers: dict[Key, dict[str, Any]] = {}
        """The newest watch body per key no pass has taken yet (module docstring)."""
        self._tasks: set[asyncio.Task[None]] = set()

    async def reconcile(self, key: Key) -> None:
        """One pass over ``key``, after any running one; folded into a queued one."""
        slot = self._slots.setdefault(key, _Slot())
        if slot.queued:
            return
        slot.queued = True
        slot.users += 1
        try:
            async with slot.lock:
                slot.queued = False
                await self._attempts(key)
        finally:
            slot.users -= 1
            if slot.users == 0:
                self._slots.pop(key, None)

    def offer(self, key: Key, body: dict[str, Any]) -> None:
        """The watch delivered ``body`` for ``key``: the next pass may use it unread."""
        self._offers[key] = body

    def delivered(self, key: Key) -> dict[str, Any] | None:
        """The body offered for ``key`` since the last pass took one, or None: read it
        from the API (module docstring: why a watch body is fresh enough)."""
        return self._offers.pop(key, None)

    async def _attempts(self, key: Key) -> None:
        for attempt in range(RETRIES):
            try:
                outcome = await self._timed(key)
            except Exception as exc:
                if kube.is_gone(exc):
                    self._offers.pop(key, None)
                    return
                # the retry reads the object from the API, not a watch body that may be
                # as old as the one just refused
                self._offers.pop(key, None)
                if attempt == RETRIES - 1:
                    self.waiting.add(key)  # the resync tries again later
                    log.exception("reconcile of %s %s/%s failed", self.kind, *key)
                    return
                delay = 0.0 if kube.is_conflict(exc) else self.backoff * (attempt + 1)
                log.info("retrying %s %s/%s after %s", self.kind, *key, exc)
                await asyncio.sleep(delay)
                continue
            if outcome is Outcome.WAIT:
                self.waiting.add(key)
            else:
                self.waiting.discard(key)
            return

    async def _timed(self, key: Key) -> Outcome:
        """One pass, counted and timed per kind (``controller.metrics``): here, where
        every kind's passes go through, so no handler counts for itself."""
        started = time.monotonic()
        outcome = "error"
        try:
            result = await self._once(key)
            outcome = result.value
            return result
        except Exception as exc:
            if kube.is_gone(exc):
                outcome = Outcome.GONE.value
            raise
        finally:
            metrics.RECONCILES.labels(kind=self.kind, outcome=outcome).inc()
            metrics.RECONCILE_SECONDS.labels(kind=self.kind).observe(time.monotonic() - started)

    def forget(self, key: Key) -> None:
        """The object was deleted: no more resyncs for it."""
        self.waiting.discard(key)
        self._offers.pop(key, None)

    def spawn(self, key: Key) -> None:
        """A pass over ``key`` in the background (for wake-ups outside a handler)."""
        task = asyncio.get_running_loop().create_task(self.reconcile(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resync(self) -> None:
        """Forever: every ``resync_seconds``, a pass over every waiting key."""
        while True:
            await asyncio.sleep(self.resync_seconds)
            for key in sorted(self.waiting):
                self.spawn(key)

    async def stop(self) -> None:
        """Cancel the background passes."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
