"""A small RFB (VNC) client over the gateway's websocket, for tests and the bench: the
handshake, framebuffer update requests (raw encoding only, so every byte is framed) and
key events. Not product code; the gateway never imports devenv."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Any

VERSION = b"RFB 003.008\n"


@dataclass(frozen=True)
class ServerInit:
    width: int
    height: int
    bits_per_pixel: int
    name: str


class RFBClient:
    """RFB over an aiohttp client websocket (``session.ws_connect(...)``)."""

    def __init__(self, ws: Any, *, timeout: float = 20.0) -> None:
        self.ws = ws
        self.timeout = timeout
        self._buf = bytearray()
        self.init: ServerInit | None = None

    async def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes from the server (EOFError when the websocket closes)."""
        while len(self._buf) < n:
            msg = await asyncio.wait_for(self.ws.receive(), self.timeout)
            if not isinstance(msg.data, bytes):
                raise EOFError(f"websocket ended: {msg.type!r} {msg.data!r} {msg.extra!r}")
            self._buf += msg.data
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def send(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def handshake(self, *, shared: bool = True) -> ServerInit:
        """Version 3.8, security None, ClientInit; the ServerInit."""
        version = await self.read(12)
        if version != VERSION:
            raise AssertionError(f"server greeted {version!r}")
        await self.send(VERSION)
        count = (await self.read(1))[0]
        types = await self.read(count)
        if 1 not in types:
            raise AssertionError(f"server offers security types {list(types)}, not None")
        await self.send(b"\x01")
        result = struct.unpack(">I", await self.read(4))[0]
        if result != 0:
            raise AssertionError(f"security result {result}")
        await self.send(b"\x01" if shared else b"\x00")
        width, height = struct.unpack(">HH", await self.read(4))
        pixel_format = await self.read(16)
        name_length = struct.unpack(">I", await self.read(4))[0]
        name = (await self.read(name_length)).decode(errors="replace")
        self.init = ServerInit(width, height, pixel_format[0], name)
        return self.init

    async def request_update(self, *, incremental: bool = False) -> None:
        assert self.init is not None
        await self.send(
            struct.pack(">BBHHHH", 3, int(incremental), 0, 0, self.init.width, self.init.height)
        )

    async def framebuffer_update(self) -> int:
        """Read server messages until a FramebufferUpdate has arrived in full; its number
        of rectangles. Raw encoding only (the client never sends SetEncodings)."""
        assert self.init is not None
        bytes_per_pixel = self.init.bits_per_pixel // 8
        while True:
            kind = (await self.read(1))[0]
            if kind == 0:  # FramebufferUpdate
                _pad, rects = struct.unpack(">BH", await self.read(3))
                for _ in range(rects):
                    _x, _y, w, h, encoding = struct.unpack(">HHHHi", await self.read(12))
                    if encoding != 0:
                        raise AssertionError(f"unexpected encoding {encoding}")
                    await self.read(w * h * bytes_per_pixel)
                return int(rects)
            if kind == 2:  # Bell
                continue
            if kind == 3:  # ServerCutText
                await self.read(3)
                await self.read(struct.unpack(">I", await self.read(4))[0])
                continue
            raise AssertionError(f"unexpected server message type {kind}")

    async def key(self, keysym: int) -> None:
        """Press and release one key."""
        for down in (1, 0):
            await self.send(struct.pack(">BBHI", 4, down, 0, keysym))

    async def type_text(self, text: str) -> None:
        """Type ``text`` (ASCII; ``\\n`` is Return)."""
        for ch in text:
            await self.key(0xFF0D if ch == "\n" else ord(ch))


@dataclass(frozen=True)
class _Received:
    data: bytes | None
    type: str = "stream"
    extra: Any = None


class StreamTransport:
    """A TCP stream (asyncio) shaped like the websocket ``RFBClient`` reads, so the same
    client speaks RFB to a VNC server directly: the baseline a proxied session is
    measured against."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def receive(self) -> _Received:
        data = await self.reader.read(64 * 1024)
        return _Received(data if data else None, type="closed" if not data else "stream")

    async def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
