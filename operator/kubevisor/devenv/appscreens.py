"""What a published application looks like in the browser, for tests and the benchmark:
noVNC's canvas as the browser renders it, and whether it shows one application window
and nothing else (no desktop, no shell): a session's display has no window manager and a
black root window, so everything lit is the application's window, one rectangle.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from kubevisor.devenv import browser, testing

#: A pixel is "lit" (not the black root window) above this luminance.
LIT = 24


_RECT = (
    "(() => { const c = document.querySelector('#screen canvas');"
    " if (!c) return null; const r = c.getBoundingClientRect();"
    " return {x: Math.round(r.x), y: Math.round(r.y), width: Math.round(r.width),"
    " height: Math.round(r.height)}; })()"
)


async def point_at(page: browser.Page, x: int, y: int) -> None:
    """Move the mouse over canvas pixel (x, y) (a mouse event on noVNC's canvas, which
    sends it as an RFB PointerEvent). A session's display has no window manager, so the X
    input focus follows the pointer: keys reach the window under the mouse, as they do
    for a user whose mouse rests on the application."""
    await page.evaluate(
        "(() => { const c = document.querySelector('#screen canvas');"
        " const r = c.getBoundingClientRect();"
        " for (const type of ['mousemove', 'mousemove']) {"
        f"  c.dispatchEvent(new MouseEvent(type, {{clientX: r.x + {x}, clientY: r.y + {y},"
        " bubbles: true}));"
        " } })()"
    )


async def canvas(page: browser.Page) -> Any:
    """noVNC's canvas, screenshotted by the browser (a Pillow RGB image)."""
    from PIL import Image

    await page.send("Page.bringToFront")  # a hidden tab may never render a frame to capture
    rect = await page.evaluate(_RECT)
    if not rect or not rect["width"] or not rect["height"]:
        return None
    png = await page.screenshot(clip=rect)
    with Image.open(io.BytesIO(png)) as img:
        return img.convert("RGB")


@dataclass(frozen=True)
class Seen:
    """What a canvas shows."""

    size: tuple[int, int]
    window: tuple[int, int, int, int] | None
    """Bounding box of all lit pixels, or None: all black. Everything outside it is the
    black root window."""
    fill: float
    """Share of that box that is lit: a window with a light background (xterm) fills
    its rectangle; two windows apart, or a window plus a panel, leave most of their
    joint box dark."""

    @property
    def only_a_window(self) -> bool:
        """One filled window, smaller than the screen, black all around it."""
        if self.window is None:
            return False
        x0, y0, x1, y1 = self.window
        w, h = self.size
        return (x1 - x0) * (y1 - y0) < 0.9 * w * h and self.fill > 0.6


def seen(img: Any) -> Seen:
    """Where the lit pixels of ``img`` are."""
    gray = img.convert("L").point(lambda v: 255 if v > LIT else 0)
    box = gray.getbbox()
    if box is None:
        return Seen(img.size, None, 0.0)
    x0, y0, x1, y1 = box
    inside = sum(1 for v in gray.crop(box).getdata() if v)
    return Seen(img.size, (x0, y0, x1, y1), inside / ((x1 - x0) * (y1 - y0)))


def changed(a: Any, b: Any) -> int:
    """Pixels that differ between two canvases of one size (any channel by more than 32)."""
    from PIL import ImageChops

    if a.size != b.size:
        return int(a.width * a.height)
    diff: Any = ImageChops.difference(a, b).convert("L")
    return sum(1 for v in diff.getdata() if v > 32)


async def settled_window(page: browser.Page, *, within: float = 60.0) -> Any:
    """The canvas once it shows the application's window (and only it) and has stopped
    changing (e.g. the shell in an xterm printed its prompt)."""
    shots: list[Any] = []

    async def shown() -> bool:
        shot = await canvas(page)
        shots[:] = [shot, *shots[:1]]
        if shot is None or not seen(shot).only_a_window or len(shots) < 2:
            return False
        return shots[1] is not None and changed(shot, shots[1]) == 0

    async def last() -> Any:
        return shots and shots[0] is not None and seen(shots[0])

    found: bool = await testing.wait_for_async(
        shown, timeout=within, what="the application's window in the browser, settled",
        every=1.0, show=last,
    )  # fmt: skip
    assert found
    return shots[0]
