"""The browser → VNC stream filter (``gateway/rfbfilter``): a view-only viewer's input
never reaches the desktop, what shapes its picture does; every viewer asks for a shared
session; bytes it cannot frame end the session instead of being guessed at."""

from __future__ import annotations

import struct

import pytest

from kubevisor.gateway.rfbfilter import ClientStreamFilter, ProtocolViolation

pytestmark = pytest.mark.unit

VERSION = b"RFB 003.008\n"
HANDSHAKE_NONE = VERSION + b"\x01" + b"\x00"  # security None, ClientInit exclusive
SHARED_HANDSHAKE = VERSION + b"\x01" + b"\x01"

SET_PIXEL_FORMAT = b"\x00" + bytes(19)
SET_ENCODINGS = b"\x02\x00" + struct.pack(">H", 2) + struct.pack(">ii", 7, -223)
FB_UPDATE_REQUEST = b"\x03\x01" + struct.pack(">HHHH", 0, 0, 640, 480)
KEY_EVENT = b"\x04\x01\x00\x00" + struct.pack(">I", 0x61)
POINTER_EVENT = b"\x05\x01" + struct.pack(">HH", 10, 20)
CUT_TEXT = b"\x06\x00\x00\x00" + struct.pack(">i", 5) + b"hello"
EXTENDED_CUT_TEXT = b"\x06\x00\x00\x00" + struct.pack(">i", -8) + bytes(8)
CONTINUOUS_UPDATES = b"\x96\x01" + struct.pack(">HHHH", 0, 0, 640, 480)
FENCE = b"\xf8\x00\x00\x00" + struct.pack(">I", 1) + b"\x03abc"
XVP = b"\xfa\x00\x01\x04"  # reboot
SET_DESKTOP_SIZE = b"\xfb\x00" + struct.pack(">HH", 800, 600) + b"\x01\x00" + bytes(16)
QEMU_KEY = b"\xff\x00" + struct.pack(">HII", 1, 0x61, 0x1E)

PICTURE = [SET_PIXEL_FORMAT, SET_ENCODINGS, FB_UPDATE_REQUEST, CONTINUOUS_UPDATES, FENCE]
INPUT = [KEY_EVENT, POINTER_EVENT, CUT_TEXT, EXTENDED_CUT_TEXT, XVP, SET_DESKTOP_SIZE, QEMU_KEY]


def _run(view_only: bool, messages: list[bytes], *, chunk: int | None = None) -> bytes:
    f = ClientStreamFilter(view_only=view_only)
    stream = HANDSHAKE_NONE + b"".join(messages)
    if chunk is None:
        return f.feed(stream)
    return b"".join(f.feed(stream[i : i + chunk]) for i in range(0, len(stream), chunk))


@pytest.mark.parametrize("message", PICTURE, ids=lambda m: f"type-{m[0]}")
@pytest.mark.parametrize("view_only", [False, True])
def test_picture_messages_pass_for_everyone(view_only: bool, message: bytes) -> None:
    assert _run(view_only, [message]) == SHARED_HANDSHAKE + message


@pytest.mark.parametrize("message", INPUT, ids=lambda m: f"type-{m[0]}")
def test_input_passes_for_a_full_viewer(message: bytes) -> None:
    assert _run(False, [message]) == SHARED_HANDSHAKE + message


@pytest.mark.parametrize("message", INPUT, ids=lambda m: f"type-{m[0]}")
def test_input_is_dropped_for_a_view_only_viewer(message: bytes) -> None:
    assert _run(True, [message]) == SHARED_HANDSHAKE


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_messages_split_anywhere_come_out_whole_and_filtered(chunk: int) -> None:
    mixed = [SET_ENCODINGS, KEY_EVENT, FB_UPDATE_REQUEST, POINTER_EVENT, CUT_TEXT, FENCE]
    assert _run(True, mixed, chunk=chunk) == (
        SHARED_HANDSHAKE + SET_ENCODINGS + FB_UPDATE_REQUEST + FENCE
    )
    assert _run(False, mixed, chunk=chunk) == SHARED_HANDSHAKE + b"".join(mixed)


@pytest.mark.parametrize(("view_only", "inputs", "dropped"), [(False, 2, 0), (True, 0, 2)])
def test_input_is_counted(view_only: bool, inputs: int, dropped: int) -> None:
    """The gateway reports a full viewer's input (status.session.lastInputAt) from
    ``inputs``; a view-only viewer's dropped input is not activity."""
    f = ClientStreamFilter(view_only=view_only)
    f.feed(VERSION + b"\x01\x00" + SET_ENCODINGS + KEY_EVENT + FB_UPDATE_REQUEST + POINTER_EVENT)
    assert (f.inputs, f.dropped) == (inputs, dropped)


def test_vnc_authentication_response_is_forwarded() -> None:
    f = ClientStreamFilter(view_only=True)
    response = bytes(range(16))
    assert f.feed(VERSION + b"\x02" + response + b"\x00" + KEY_EVENT) == (
        VERSION + b"\x02" + response + b"\x01"
    )
    assert f.dropped == 1


@pytest.mark.parametrize(
    "stream",
    [
        b"RFB 003.003\n",  # 3.3: the server picks security, the client stream cannot tell
        b"GET / HTTP/1.1\r\n",
        VERSION + b"\x13",  # VeNCrypt: TLS inside, not framed
        HANDSHAKE_NONE + b"\x07" + bytes(16),  # unknown message type
        HANDSHAKE_NONE + b"\xff\x01\x00\x00",  # QEMU audio sub-type
        HANDSHAKE_NONE + b"\x06\x00\x00\x00" + struct.pack(">i", 1 << 24),  # huge paste
    ],
    ids=["rfb-3.3", "not-rfb", "vencrypt", "unknown-type", "qemu-audio", "huge-cut-text"],
)
@pytest.mark.parametrize("view_only", [False, True])
def test_unframeable_bytes_end_the_session(view_only: bool, stream: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        ClientStreamFilter(view_only=view_only).feed(stream)
