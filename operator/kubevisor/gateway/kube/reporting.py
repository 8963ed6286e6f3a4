"""The gateway's one write through the API server: a claim's ``status.session``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kubevisor.api import desktopclaims, groups, kinds
from kubevisor.gateway import sessions

log = logging.getLogger(__name__)


class Reporter:
    """Applies sessions in the order they were queued, one at a time, off the byte pump
    (a slow API server must not delay a keystroke). A failed write is logged and the next
    report carries the whole session again."""

    def __init__(self, api: client.ApiClient) -> None:
        # Any: the generated client's stubs do not know its own _content_type option.
        self._custom: Any = client.CustomObjectsApi(api)
        self._queue: asyncio.Queue[tuple[sessions.Key, desktopclaims.SessionStatus]] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None

    def report(self, key: sessions.Key, session: desktopclaims.SessionStatus) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="session-reporter")
        self._queue.put_nowait((key, session))

    async def drain(self) -> None:
        """Wait until every queued report was written (or failed)."""
        await self._queue.join()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            (namespace, name), session = await self._queue.get()
            try:
                await self._apply(namespace, name, session)
            except ApiException as exc:
                if exc.status != 404:  # a deleted claim has no session to report
                    log.warning("session of %s/%s not reported: %s", namespace, name, exc.reason)
            except Exception as exc:  # the reporter must outlive one bad write
                log.warning("session of %s/%s not reported: %s", namespace, name, exc)
            finally:
                self._queue.task_done()

    async def _apply(self, namespace: str, name: str, session: desktopclaims.SessionStatus) -> None:
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": kinds.DESKTOPCLAIM.kind,
            "metadata": {"name": name, "namespace": namespace},
            "status": {"session": session.model_dump(mode="json", by_alias=True,
                                                     exclude_none=True)},
        }  # fmt: skip
        await self._custom.patch_namespaced_custom_object_status(
            groups.GROUP, groups.VERSION, namespace, kinds.DESKTOPCLAIM.plural, name, body,
            field_manager=desktopclaims.GATEWAY_FIELD_MANAGER, force=True,
            _content_type="application/apply-patch+yaml",
        )  # fmt: skip
