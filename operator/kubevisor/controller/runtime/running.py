"""The controller process's runtime: one API client, one recorder, every reconciler,
and the watch observer behind the metrics of phases and migrations (``observing``).

``Runtime`` is made once in ``main`` and handed to each kind; its ``Lifecycle`` handler
connects before kopf starts watching and closes everything when kopf stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from kubevisor.controller.kube import client as kube
from kubevisor.controller.kube import operating
from kubevisor.controller.runtime import events, observing, reconciling


class Runtime:
    """Shared by every kind of one controller process."""

    def __init__(self, *, connect: Callable[[], Awaitable[kube.Kube]] = kube.Kube.connect) -> None:
        self._connect = connect
        self._client: kube.Kube | None = None
        self.events = events.Recorder()
        self.observer = observing.Observer(post=self.events.post)
        self._reconcilers: list[reconciling.Reconciler] = []
        self._resyncs: list[asyncio.Task[None]] = []

    @property
    def client(self) -> kube.Kube:
        """The API client; a handler called before the connection asks to be retried."""
        if self._client is None:
            raise operating.Retry("Kubernetes client not connected yet", delay=1)
        return self._client

    def reconciler(
        self, kind: str, once: reconciling.Pass, *, resync_seconds: float
    ) -> reconciling.Reconciler:
        """A reconciler whose resync runs while the runtime does."""
        reconciler = reconciling.Reconciler(kind, once, resync_seconds=resync_seconds)
        self._reconcilers.append(reconciler)
        return reconciler

    async def start(self) -> None:
        """Connect; start the recorder and every reconciler's resync."""
        self._client = await self._connect()
        self.events.start(self._client)
        loop = asyncio.get_running_loop()
        self._resyncs = [loop.create_task(r.resync()) for r in self._reconcilers]

    async def stop(self) -> None:
        """Stop resyncs and passes, post the queued Events, close the client."""
        for task in self._resyncs:
            task.cancel()
        for task in self._resyncs:
            with contextlib.suppress(BaseException):
                await task
        self._resyncs = []
        for reconciler in self._reconcilers:
            await reconciler.stop()
        await self.events.stop()
        if self._client is not None:
            await self._client.close()
            self._client = None

    def handlers(self) -> list[operating.Handler]:
        """The runtime's own: connect/close, and the metrics' watch observer."""
        return [
            operating.Lifecycle(startup=self.start, cleanup=self.stop),
            *self.observer.handlers(),
        ]
