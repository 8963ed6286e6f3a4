"""The browser → VNC server half of an RFB session, parsed message by message (pure,
sans-I/O: bytes in, bytes to forward out).

Two jobs:

- every viewer's ClientInit asks for a *shared* session (RFC 6143 §7.3.1), so a second
  viewer joins the desktop instead of disconnecting the first (help-desk shadowing);
- a view-only viewer's input never reaches the desktop: KeyEvent, PointerEvent,
  ClientCutText (paste is typing), QEMU's extended key event, SetDesktopSize and XVP
  (power actions) are dropped; what only shapes the picture it receives
  (SetPixelFormat, SetEncodings, FramebufferUpdateRequest, EnableContinuousUpdates,
  Fence) is forwarded.

A message this module cannot frame ends the session (``ProtocolViolation``): guessing its
length would let a view-only viewer smuggle input past the filter. Only RFB 3.7 and 3.8
with security None or VNC authentication are framed; noVNC speaks 3.8.
"""

from __future__ import annotations

import struct
from enum import IntEnum, auto


class ProtocolViolation(Exception):
    """The browser sent bytes the filter cannot frame; the session must end."""


class ClientMessage(IntEnum):
    """Client-to-server message types (RFC 6143 §7.5 plus the extensions noVNC uses)."""

    SET_PIXEL_FORMAT = 0
    SET_ENCODINGS = 2
    FRAMEBUFFER_UPDATE_REQUEST = 3
    KEY_EVENT = 4
    POINTER_EVENT = 5
    CLIENT_CUT_TEXT = 6
    ENABLE_CONTINUOUS_UPDATES = 150
    FENCE = 248
    XVP = 250
    SET_DESKTOP_SIZE = 251
    QEMU = 255


#: What a view-only viewer may not send: input, clipboard, resizing, power actions.
INPUT_MESSAGES = frozenset(
    {
        ClientMessage.KEY_EVENT,
        ClientMessage.POINTER_EVENT,
        ClientMessage.CLIENT_CUT_TEXT,
        ClientMessage.XVP,
        ClientMessage.SET_DESKTOP_SIZE,
        ClientMessage.QEMU,  # only sub-type 0, the extended key event, is framed
    }
)

_SECURITY_NONE = 1
_SECURITY_VNC_AUTH = 2
_MAX_CUT_TEXT = 1 << 20


class _Stage(IntEnum):
    VERSION = auto()
    SECURITY = auto()
    VNC_AUTH = auto()
    CLIENT_INIT = auto()
    MESSAGES = auto()


def _message_length(buf: bytes | bytearray) -> int | None:
    """Length of the complete client message at the start of ``buf``; None if more bytes
    are needed to tell."""
    kind = buf[0]
    fixed = {
        ClientMessage.SET_PIXEL_FORMAT: 20,
        ClientMessage.FRAMEBUFFER_UPDATE_REQUEST: 10,
        ClientMessage.KEY_EVENT: 8,
        ClientMessage.POINTER_EVENT: 6,
        ClientMessage.ENABLE_CONTINUOUS_UPDATES: 10,
        ClientMessage.XVP: 4,
    }
    if kind in fixed:
        return fixed[ClientMessage(kind)]
    if kind == ClientMessage.SET_ENCODINGS:
        if len(buf) < 4:
            return None
        count: int = struct.unpack_from(">H", buf, 2)[0]
        return 4 + 4 * count
    if kind == ClientMessage.CLIENT_CUT_TEXT:
        if len(buf) < 8:
            return None
        length: int = struct.unpack_from(">i", buf, 4)[0]
        if length < 0:  # extended clipboard (negative length): its payload is |length|
            length = -length
        if length > _MAX_CUT_TEXT:
            raise ProtocolViolation(f"ClientCutText of {length} bytes")
        return 8 + length
    if kind == ClientMessage.FENCE:
        if len(buf) < 9:
            return None
        return 9 + buf[8]
    if kind == ClientMessage.SET_DESKTOP_SIZE:
        if len(buf) < 8:
            return None
        return 8 + 16 * buf[6]
    if kind == ClientMessage.QEMU:
        if len(buf) < 2:
            return None
        if buf[1] != 0:
            raise ProtocolViolation(f"QEMU client message sub-type {buf[1]} is not framed")
        return 12
    raise ProtocolViolation(f"unknown RFB client message type {kind}")


class ClientStreamFilter:
    """Feed it the browser's bytes as they arrive; forward what :meth:`feed` returns."""

    def __init__(self, *, view_only: bool) -> None:
        self.view_only = view_only
        self._stage = _Stage.VERSION
        self._buf = bytearray()
        self.dropped = 0
        """How many input messages were dropped (view-only)."""
        self.inputs = 0
        """How many input messages were forwarded (a full viewer typing or pointing)."""

    def feed(self, data: bytes) -> bytes:
        """The bytes of ``data`` (plus what was held back) to forward to the VNC server.

        Incomplete messages are held until the rest arrives. Raises
        :class:`ProtocolViolation` for bytes it cannot frame.
        """
        self._buf += data
        out = bytearray()
        while True:
            step = self._step()
            if step is None:
                return bytes(out)
            length, forward = step
            chunk = bytes(self._buf[:length])
            del self._buf[:length]
            if forward:
                out += chunk

    def _step(self) -> tuple[int, bool] | None:
        """(length, forward?) of the next complete unit, or None to wait for more."""
        buf = self._buf
        if self._stage is _Stage.VERSION:
            if len(buf) < 12:
                return None
            version = bytes(buf[:12])
            if version not in (b"RFB 003.008\n", b"RFB 003.007\n"):
                raise ProtocolViolation(f"RFB version {version!r} is not framed")
            self._stage = _Stage.SECURITY
            return 12, True
        if self._stage is _Stage.SECURITY:
            if not buf:
                return None
            if buf[0] == _SECURITY_NONE:
                self._stage = _Stage.CLIENT_INIT
            elif buf[0] == _SECURITY_VNC_AUTH:
                self._stage = _Stage.VNC_AUTH
            else:
                raise ProtocolViolation(f"RFB security type {buf[0]} is not framed")
            return 1, True
        if self._stage is _Stage.VNC_AUTH:
            if len(buf) < 16:
                return None
            self._stage = _Stage.CLIENT_INIT
            return 16, True
        if self._stage is _Stage.CLIENT_INIT:
            if not buf:
                return None
            buf[0] = 1  # shared: never disconnect the other viewers
            self._stage = _Stage.MESSAGES
            return 1, True
        if not buf:
            return None
        length = _message_length(buf)
        if length is None or len(buf) < length:
            return None
        if buf[0] in INPUT_MESSAGES:
            if self.view_only:
                self.dropped += 1
                return length, False
            self.inputs += 1
        return length, True
