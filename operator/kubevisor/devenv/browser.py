"""A real headless Chromium for tests, driven over the Chrome DevTools Protocol (CDP).

Why CDP by hand and not Playwright: the browser is Debian's ``/usr/bin/chromium`` (the
project tests against the distribution's package, installed by hack/setup); CDP is a
JSON-RPC over one websocket, and aiohttp (already a dependency) speaks websockets, so a
page's navigation, JavaScript evaluation, screenshots and key events need ~150 lines and no
browser download or Node driver. Not product code; only tests and benches import it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = Path(os.environ.get("KUBEVISOR_CHROMIUM", "/usr/bin/chromium"))

#: The flags, and why each is needed here:
#: --headless=new  no display on the test machine (the new headless mode is the real
#:                 browser without a window, not the old separate implementation);
#: --no-sandbox    tests run as root, and Chromium refuses to start its sandbox as root;
#: --disable-gpu   no GPU on the machine: software compositing, without probing for one;
#: --disable-dev-shm-usage  /dev/shm may be small in containers; use /tmp instead;
#: --remote-debugging-port=0  CDP on a free loopback port, printed on stderr;
#: --window-size   large enough that a 720x400 VGA console fits unscaled.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1280,900",
)

_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")

#: CDP key descriptions for what the tests type (key, code, virtual key code, text).
_SPECIAL_KEYS = {"\n": ("Enter", "Enter", 13, "\r")}


class BrowserError(RuntimeError):
    """A CDP command answered with an error, or the browser went away."""


class Page:
    """One tab (a CDP target, attached with a flat session)."""

    def __init__(self, browser: Browser, session_id: str, target_id: str) -> None:
        self.browser = browser
        self.session_id = session_id
        self.target_id = target_id

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, session_id=self.session_id, **params)

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited when it is a promise)."""
        out = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in out:
            raise BrowserError(f"{expression!r} threw: {out['exceptionDetails']}")
        return out["result"].get("value")

    async def screenshot(self, clip: dict[str, float] | None = None) -> bytes:
        """A PNG of the page (or of ``clip``: x, y, width, height in CSS pixels)."""
        params: dict[str, Any] = {"format": "png"}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
        out = await self.send("Page.captureScreenshot", **params)
        return base64.b64decode(out["data"])

    async def type_text(self, text: str) -> None:
        """Key presses as a user types them (keyDown with text, keyUp), to the focused
        element; ASCII letters, digits and ``\\n`` (Return)."""
        for ch in text:
            if ch in _SPECIAL_KEYS:
                key, code, vk, typed = _SPECIAL_KEYS[ch]
            elif ch.isalpha():
                key, code, vk, typed = ch, f"Key{ch.upper()}", ord(ch.upper()), ch
            elif ch.isdigit():
                key, code, vk, typed = ch, f"Digit{ch}", ord(ch), ch
            else:
                raise ValueError(f"type_text cannot type {ch!r}")
            common = {"key": key, "code": code, "windowsVirtualKeyCode": vk}
            await self.send("Input.dispatchKeyEvent", type="keyDown", text=typed, **common)
            await self.send("Input.dispatchKeyEvent", type="keyUp", **common)

    async def close(self) -> None:
        await self.browser.send("Target.closeTarget", targetId=self.target_id)


class Browser:
    """The browser-level CDP connection: commands and their answers by id."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            future = self._waiting.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(BrowserError("the browser's CDP connection closed"))

    async def send(
        self, method: str, *, session_id: str | None = None, **params: Any
    ) -> dict[str, Any]:
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session_id is not None:
            message["sessionId"] = session_id
        await self.ws.send_str(json.dumps(message))
        answer = await asyncio.wait_for(future, 60)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result") or {}
        return result

    async def new_page(self, url: str = "about:blank") -> Page:
        target = await self.send("Target.createTarget", url=url)
        attached = await self.send(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        page = Page(self, attached["sessionId"], target["targetId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        return page

    async def aclose(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()


async def _devtools_url(proc: asyncio.subprocess.Process, startup_s: float) -> str:
    """The browser's CDP websocket address, from the line Chromium prints on stderr."""
    assert proc.stderr is not None
    seen = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(startup_s):
            while line := await proc.stderr.readline():
                seen += line
                if match := _LISTENING.search(line):
                    return match.group(1).decode()
    raise BrowserError(f"chromium printed no DevTools address: {seen.decode(errors='replace')}")


async def _drain(proc: asyncio.subprocess.Process, log: Path | None) -> None:
    """Chromium's stderr after startup, into ``log`` (or nowhere), so the pipe never fills."""
    assert proc.stderr is not None
    out = await asyncio.to_thread(open, log if log is not None else os.devnull, "ab")
    with out:
        while line := await proc.stderr.readline():
            out.write(line)


@contextlib.asynccontextmanager
async def chromium(*, log: Path | None = None, startup_s: float = 60.0) -> AsyncIterator[Browser]:
    """Headless Chromium for the duration of the block (its own profile in a temporary
    directory, stopped and removed at the end)."""
    profile = Path(tempfile.mkdtemp(prefix="kv-chromium-"))
    argv = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    drain: asyncio.Task[None] | None = None
    try:
        url = await _devtools_url(proc, startup_s)
        drain = asyncio.create_task(_drain(proc, log))
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url, max_msg_size=0)
            browser = Browser(ws)
            try:
                yield browser
            finally:
                await browser.aclose()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if drain is not None:
            await drain
        shutil.rmtree(profile, ignore_errors=True)
