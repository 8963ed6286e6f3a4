"""The gateway's HTTP side (aiohttp): the noVNC page, its files, and the websocket that
carries RFB to the admitted desktop's VNC display.

Why aiohttp and not websockify's server: docs/gateway.md "Why not websockify's server".
The websocket speaks what websockify speaks (binary frames, the ``binary`` subprotocol
when the browser offers it, the token in the ``token`` query parameter), so noVNC cannot
tell the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from aiohttp import WSMsgType, web
from aiohttp.abc import AbstractAccessLogger

from kubevisor.api import desktopclaims, displaytokens
from kubevisor.gateway import (
    admission,
    admitting,
    dialing,
    metrics,
    publishing,
    rfbfilter,
    sessions,
)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
#: websocket close code for "policy violation" (RFC 6455 §7.4.1).
CLOSE_POLICY = 1008
_READ_SIZE = 64 * 1024


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log without the query string: the token travels in the query
    (``/websockify?token=...``, noVNC's ``path``), and a token must never be logged."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %.3fs',
            request.remote, request.method, request.path, response.status, time,
        )  # fmt: skip


class Reports(Protocol):
    """Where session reports go (``gateway.kube.reporting.Reporter``)."""

    def report(self, key: sessions.Key, session: desktopclaims.SessionStatus) -> None: ...


class Gateway:
    """The aiohttp application: routes, admission, one proxy task pair per session."""

    def __init__(
        self,
        admitter: admission.Admitter,
        *,
        dialer: dialing.Dialer,
        novnc_dir: Path,
        recheck_seconds: float = 5.0,
        reports: Reports | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        publisher: publishing.Publisher | None = None,
    ) -> None:
        self.admitter = admitter
        self.dialer = dialer
        self.publisher = publisher
        """Runs published-application sessions (None: application claims get 502)."""
        self.novnc_dir = novnc_dir
        self.recheck_seconds = recheck_seconds
        self.reports = reports
        self.book = sessions.SessionBook()
        self._clock = clock
        self.sessions = 0
        """Sessions open now."""

    def _report(self, target: admitting.Target, event: str) -> None:
        """Book a full viewer's ``event`` (connected, disconnected, input) and queue the
        session report it calls for; view-only viewers are not reported."""
        if self.reports is None or target.view_only:
            return
        key, now = (target.namespace, target.claim), self._clock()
        if event == "connected":
            session: desktopclaims.SessionStatus | None = self.book.connected(key, now=now)
        elif event == "disconnected":
            session = self.book.disconnected(key, now=now)
        else:
            session = self.book.input(key, now=now)
        if session is not None:
            self.reports.report(key, session)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/vnc.html", self._page)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/websockify", self._websocket)
        app.router.add_get("/admission", self._admission)
        for part in ("core", "vendor"):
            app.router.add_static(f"/{part}/", self.novnc_dir / part)
        return app

    async def _page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "vnc.html", headers={"Cache-Control": "no-store"})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _admission(self, request: web.Request) -> web.Response:
        """Whether the token would be admitted now, without using it: the page asks this
        after its websocket was refused, because a browser never shows a script the body
        of a refused websocket handshake. Says no more than that 403 body does."""
        _, decision = await self.admitter.admit(
            request.query.get(displaytokens.TOKEN_QUERY), consume=False
        )
        if isinstance(decision, admitting.Refused):
            return web.Response(status=403, text=f"{decision.reason}: {decision.message}\n")
        return web.Response(text="Admissible: the token would open the desktop\n")

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        grant, decision = await self.admitter.admit(request.query.get(displaytokens.TOKEN_QUERY))
        if isinstance(decision, admitting.Refused):
            log.warning("refused %s: %s", decision.reason, decision.message)
            metrics.REFUSALS.labels(reason=str(decision.reason)).inc()
            return web.Response(status=403, text=f"{decision.reason}: {decision.message}\n")
        assert grant is not None
        try:
            reader, writer = await self._open(grant, decision)
        except (OSError, TimeoutError, publishing.SessionFailed) as exc:
            log.warning("display of %s/%s unreachable: %s", grant.namespace, grant.claim, exc)
            metrics.REFUSALS.labels(reason="DisplayUnreachable").inc()
            return web.Response(status=502, text=f"DisplayUnreachable: {exc}\n")
        ws = web.WebSocketResponse(protocols=("binary",), heartbeat=30.0)
        try:
            await ws.prepare(request)
            log.info(
                "session %s/%s -> %s:%s (vm %s, view-only %s)",
                grant.namespace, grant.claim, decision.host, decision.port,
                decision.vm_name, decision.view_only,
            )  # fmt: skip
            self.sessions += 1
            metrics.SESSIONS.inc()
            metrics.SESSIONS_OPEN.inc()
            self._report(decision, "connected")
            try:
                await self._proxy(ws, reader, writer, grant, decision)
            finally:
                self._report(decision, "disconnected")
        finally:
            dialing.close_quietly(writer)
            await ws.close()
        return ws

    async def _open(
        self, grant: displaytokens.Grant, target: admitting.Target
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The RFB stream: the desktop's VNC, or the application session's own display."""
        if target.application is None:
            return await self.dialer.open(target.host, target.port, node_name=target.node_name)
        if self.publisher is None:
            raise publishing.SessionFailed("this gateway runs no published applications")
        return await self.publisher.open(grant, target)

    async def _proxy(
        self,
        ws: web.WebSocketResponse,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        grant: displaytokens.Grant,
        target: admitting.Target,
    ) -> None:
        """Pump both ways until either side ends or the claim stops admitting."""
        upstream = asyncio.create_task(self._browser_to_vnc(ws, writer, target))
        downstream = asyncio.create_task(self._vnc_to_browser(reader, ws))
        watch = asyncio.create_task(self._watch_claim(ws, grant, target))
        tasks = {upstream, downstream, watch}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and (exc := task.exception()) is not None:
                    log.info("session %s/%s ended: %s", grant.namespace, grant.claim, exc)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self.sessions -= 1
            metrics.SESSIONS_OPEN.dec()

    async def _browser_to_vnc(
        self, ws: web.WebSocketResponse, writer: asyncio.StreamWriter, target: admitting.Target
    ) -> None:
        stream = rfbfilter.ClientStreamFilter(view_only=target.view_only)
        inputs = 0
        async for msg in ws:
            if msg.type is not WSMsgType.BINARY:
                if msg.type is WSMsgType.TEXT:
                    await ws.close(code=CLOSE_POLICY, message=b"binary frames only")
                return
            try:
                data = stream.feed(msg.data)
            except rfbfilter.ProtocolViolation as exc:
                await ws.close(code=CLOSE_POLICY, message=str(exc).encode()[:120])
                raise
            if data:
                writer.write(data)
                await writer.drain()
            if stream.inputs != inputs:
                inputs = stream.inputs
                self._report(target, "input")

    async def _vnc_to_browser(
        self, reader: asyncio.StreamReader, ws: web.WebSocketResponse
    ) -> None:
        while data := await reader.read(_READ_SIZE):
            await ws.send_bytes(data)

    async def _watch_claim(
        self, ws: web.WebSocketResponse, grant: displaytokens.Grant, target: admitting.Target
    ) -> None:
        """End the session when its claim ends (deleted, released, re-bound)."""
        while True:
            await asyncio.sleep(self.recheck_seconds)
            ended = await self.admitter.still_standing(grant, target)
            if ended is not None:
                log.info("session %s/%s closed: %s", grant.namespace, grant.claim, ended.message)
                await ws.close(code=CLOSE_POLICY, message=ended.reason.value.encode())
                return
