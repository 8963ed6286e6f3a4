"""A desktop in a real browser: a DesktopPool on a real QEMU (TCG) tiny guest, the real
``kubevisor-gateway`` process, and Debian's headless Chromium (``devenv/browser``, CDP)
opening the claim's ``status.url``.

- noVNC's canvas, screenshotted by the browser, equals the VM's own screendump
  (``virsh screenshot`` on the node's libvirtd) within a tolerance, and the guest's text
  line on it is not a blank frame;
- an expired token and a replayed URL are refused in the browser, and the page shows the
  gateway's reason;
- a view-only viewer (the claim's ``viewUrl``, the page not restricting itself) types into
  the desktop and nothing arrives, while what the user types reaches the guest (its serial
  console log prints each line read from the VGA console's tty).

The agent runs with ``--address=127.0.0.1``: the desktop's VNC listens on the loopback
inside the node's network namespace, where only the gateway (``--display-netns``) reaches
it; the test checks the fabric address does not answer.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from kubevisor.api import displaytokens, groups, naming
from kubevisor.devenv import browser, guest, nodeplans, testing
from kubevisor.devenv import cluster as devcluster

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
CLUSTER = "kvdeskgw"
NS = "default"
KEY_NS = "kubevisor-system"
POOL = "browser"
BOOT_S = 240.0
BANNER = "KUBEVISOR DESKTOP"
TYPED = "kubevisor-desktop: typed ["
VGA_READY = "kubevisor-desktop: vga ready"
#: The guest's part: clear the VGA console (tty1) and hide its cursor, so the screen is
#: still while it is compared; print a banner there; then echo every line typed on that
#: console to the serial console (the test reads it in status.consoleLog).
SCRIPT = (
    "printf '\\033[2J\\033[H\\033[?25l' >/dev/tty1; "
    f"for i in 1 2 3; do echo '{BANNER} -- $i -- HELLO FROM THE GUEST' >/dev/tty1; done; "
    f'echo "{VGA_READY}" >/dev/console; '
    f'(while read -r line; do echo "{TYPED}$line]" >/dev/console; done </dev/tty1) & '
    + guest.TICKER_SCRIPT
)
#: Pixel comparison: a pixel differs when a channel is off by more than this (noVNC may
#: receive JPEG-encoded rectangles), and at most this share of pixels may differ.
CHANNEL_TOLERANCE = 48
DIFFERING_SHARE = 0.01


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Env:
    dev: devcluster.DevCluster
    gateway: str
    """http://127.0.0.1:<port>, what the controller puts in claim URLs."""
    gateway_log: Path


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    testing.require_module("PIL")
    if not browser.CHROMIUM.exists():
        testing.absent(f"{browser.CHROMIUM} missing (hack/setup installs Debian's chromium)")
    if not (REPO / ".venv/bin/kubevisor-gateway").exists():
        testing.absent("kubevisor-gateway not installed in .venv (hack/setup)")
    port = _free_port()
    gateway = f"http://127.0.0.1:{port}"
    # The controller (started by devcluster.up, inheriting our environment) mints URLs
    # for this gateway.
    with (
        mock.patch.dict(os.environ, {"KUBEVISOR_GATEWAY_URL": gateway}),
        testing.dev_cluster(
            CLUSTER, nodes_count=1, stop_timeout=5.0, agent_args=("--address=127.0.0.1",)
        ) as dev,
    ):
        logs = dev.cluster_dir / "logs"
        try:
            example = yaml.safe_load((REPO / "docs/examples/vmtemplate.yaml").read_text())
            spec = example["spec"]
            spec["memory"] = "192Mi"
            spec["disks"] = [
                {
                    "name": "root",
                    "image": "tiny",
                    "size": "1Gi",
                    "clone": "linked",
                    "storage": "local",
                }
            ]
            spec["boot"]["cmdline"] = guest.kernel_cmdline(script=SCRIPT)
            body = {**example, "metadata": {"name": "gwdesk", "namespace": NS}}
            dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))
            argv = [
                str(VENV_BIN / "kubevisor-gateway"), f"--kubeconfig={dev.kubeconfig}",
                f"--key-namespace={KEY_NS}", "--host=127.0.0.1", f"--port={port}",
                f"--display-netns=kv-{CLUSTER}-{{node}}", "--recheck-seconds=1",
            ]  # fmt: skip
            log = logs / "gateway.log"
            with testing.running_process(argv, log=log, what="gateway"):

                def up() -> bool:
                    with socket.socket() as s:
                        return s.connect_ex(("127.0.0.1", port)) == 0

                testing.wait_for(up, timeout=30, what="the gateway listening")
                yield Env(dev=dev, gateway=gateway, gateway_log=log)
        finally:
            _cleanup(dev)


def _cleanup(dev: devcluster.DevCluster) -> None:
    dev.run_kubectl("delete", "desktopclaims", "--all", "--wait=true", "--timeout=120s")
    dev.run_kubectl("delete", "desktoppool", POOL, "--ignore-not-found", "--wait=true",
                    "--timeout=60s")  # fmt: skip
    dev.run_kubectl(
        "delete", "virtualmachines", "-l", f"{groups.LABEL_POOL}={POOL}", "--wait=true",
        "--timeout=180s",
    )  # fmt: skip


def _get(dev: devcluster.DevCluster, kind: str, name: str, ns: str = NS) -> dict[str, Any]:
    proc = subprocess.run(
        [str(dev.kubectl), f"--kubeconfig={dev.kubeconfig}", "-n", ns, "get", kind, name,
         "-o", "yaml"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return (yaml.safe_load(proc.stdout) or {}) if proc.returncode == 0 else {}


def _apply(dev: devcluster.DevCluster, kind: str, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": groups.API_VERSION, "kind": kind,
            "metadata": {"name": name, "namespace": NS}, "spec": spec}  # fmt: skip
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))


@dataclass(frozen=True)
class Desktop:
    claim: str
    claim_uid: str
    vm: str
    url: str
    view_url: str
    console: Path
    """The guest's serial console log."""


@pytest.fixture(scope="module")
def desktop(env: Env) -> Desktop:
    """One pool, one desktop, one claim (shadowing allowed), bound, the guest booted to
    its banner."""
    _apply(env.dev, "DesktopPool", POOL,
           {"templateRef": {"name": "gwdesk"}, "min": 1, "max": 1, "spare": 0,
            "tokenTtlSeconds": 600})  # fmt: skip
    claim = f"claim-{uuid.uuid4().hex[:6]}"
    _apply(env.dev, "DesktopClaim", claim,
           {"poolRef": {"name": POOL}, "user": "alice", "allowShadowing": True})  # fmt: skip

    def bound() -> dict[str, Any] | None:
        obj = _get(env.dev, "desktopclaim", claim)
        st = obj.get("status") or {}
        return obj if st.get("phase") == "Bound" and st.get("viewUrl") else None

    obj = testing.wait_for(
        bound, timeout=BOOT_S, what=f"claim {claim} Bound", every=0.5,
        show=lambda: _get(env.dev, "desktopclaim", claim).get("status"),
    )  # fmt: skip
    st = obj["status"]
    vm = st["vmName"]
    console = Path(_get(env.dev, "virtualmachine", vm)["status"]["consoleLog"])
    testing.wait_for(
        lambda: console.exists() and VGA_READY in console.read_text(errors="replace"),
        timeout=BOOT_S, what="the guest printed its banner on the VGA console", every=0.5,
    )  # fmt: skip
    assert st["url"].startswith(env.gateway + "/vnc.html?")
    return Desktop(claim=claim, claim_uid=obj["metadata"]["uid"], vm=vm, url=st["url"],
                   view_url=st["viewUrl"], console=console)  # fmt: skip


@pytest.fixture
async def chromium(env: Env) -> AsyncIterator[browser.Browser]:
    async with browser.chromium(log=env.gateway_log.with_name("chromium.log")) as b:
        yield b


async def _state(page: browser.Page) -> dict[str, str]:
    out = await page.evaluate(
        "(() => { const b = document.body; if (!b) return {};"  # not loaded yet
        " return {state: b.dataset.state || '', refusal: b.dataset.refusal || '',"
        " status: (document.getElementById('status') || {}).textContent || ''}; })()"
    )
    return dict(out or {})


async def _open(b: browser.Browser, url: str, *, expect: str) -> browser.Page:
    """A new tab on ``url``, once its page says ``expect`` (connected | disconnected)."""
    page = await b.new_page(url)

    async def reached() -> bool:
        return (await _state(page)).get("state") == expect

    await testing.wait_for_async(reached, timeout=60, what=f"the page {expect}",
                                 show=lambda: _state(page))  # fmt: skip
    return page


def _screendump(env: Env, vm: str, scratch: Path) -> Any:
    """The VM's framebuffer as QEMU sees it (``virsh screenshot``), a Pillow image."""
    from PIL import Image

    out = scratch / f"dump-{uuid.uuid4().hex[:6]}.ppm"
    node = env.dev.nodes[0]
    subprocess.run(["virsh", "-c", node.libvirt_uri, "screenshot", naming.domain_name(NS, vm),
                    str(out)], check=True, capture_output=True)  # fmt: skip
    with Image.open(out) as img:
        return img.convert("RGB")


async def _canvas(page: browser.Page) -> Any:
    """What the browser shows of noVNC's canvas: a screenshot clipped to it."""
    from PIL import Image

    rect = await page.evaluate(
        "(() => { const r = document.querySelector('#screen canvas').getBoundingClientRect();"
        " return {x: Math.round(r.x), y: Math.round(r.y), width: Math.round(r.width),"
        " height: Math.round(r.height)}; })()"
    )
    png = await page.screenshot(clip=rect)
    with Image.open(io.BytesIO(png)) as img:
        return img.convert("RGB")


def _differing_share(a: Any, b: Any) -> float:
    """Share of pixels where some channel differs by more than CHANNEL_TOLERANCE."""
    from PIL import ImageChops

    diff = (
        ImageChops.difference(a, b)
        .convert("L")
        .point(lambda v: 255 if v > CHANNEL_TOLERANCE else 0)
    )
    return sum(1 for v in diff.getdata() if v) / (a.width * a.height)


def _lit(img: Any, box: tuple[int, int, int, int]) -> int:
    """Pixels brighter than the console's black background in ``box``."""
    return sum(1 for v in img.crop(box).convert("L").getdata() if v > 96)


async def test_the_browser_shows_the_guests_console(
    env: Env, desktop: Desktop, chromium: browser.Browser, tmp_path: Path
) -> None:
    page = await _open(chromium, desktop.url, expect="connected")
    dump = _screendump(env, desktop.vm, tmp_path)
    print(f"\nscreendump {dump.size}, claim URL {desktop.url[:50]}...")
    text_row = (0, 0, dump.width, 16 * 3)  # the banner's three lines (VGA text: 16 px)
    blank = (0, dump.height - 64, dump.width, dump.height)
    assert _lit(dump, text_row) > 500, "the guest's banner is on its screen"
    assert _lit(dump, blank) == 0, "below the banner the screen is blank"

    async def matches() -> bool:
        shot = await _canvas(page)
        return bool(shot.size == dump.size and _differing_share(shot, dump) <= DIFFERING_SHARE)

    async def seen() -> Any:
        shot = await _canvas(page)
        return shot.size, _differing_share(shot, dump) if shot.size == dump.size else None

    await testing.wait_for_async(
        matches, timeout=60, what="noVNC's canvas equal to the VM's screendump", show=seen
    )
    shot = await _canvas(page)
    shot.save(tmp_path / "canvas.png")
    share = _differing_share(shot, dump)
    print(f"canvas {shot.size}: {share:.4%} of pixels differ from the screendump")
    assert _lit(shot, text_row) > 500, "the banner, in the browser"
    banner = shot.crop(text_row)
    assert _differing_share(banner, _black(banner)) > 0.05, "the banner is not a blank frame"


def _black(like: Any) -> Any:
    """A black frame of ``like``'s size (what a canvas shows before any update)."""
    from PIL import Image

    return Image.new("RGB", like.size, (0, 0, 0))


async def test_expired_and_replayed_tokens_are_refused_in_the_browser(
    env: Env, desktop: Desktop, chromium: browser.Browser
) -> None:
    key = _display_key(env)
    expired = displaytokens.mint(key, displaytokens.Grant(
        namespace=NS, claim=desktop.claim, claim_uid=desktop.claim_uid,
        expires_at=int(time.time()) - 5, nonce=uuid.uuid4().hex,
    ))  # fmt: skip
    page = await _open(chromium, displaytokens.desktop_url(env.gateway, expired),
                       expect="disconnected")  # fmt: skip
    state = await testing.wait_for_async(
        lambda: _refusal(page), timeout=30, what="the page showing the refusal"
    )
    print(f"\nexpired token: the page says {state['status']!r}")
    assert state["refusal"] == "Expired", state
    assert "expired" in state["status"]

    # A URL as the controller mints it (the claim's own was used by the first test): the
    # first tab opens the desktop, the same URL again is a replay.
    url = _fresh_url(env, desktop)
    first = await _open(chromium, url, expect="connected")
    again = await _open(chromium, url, expect="disconnected")
    state = await testing.wait_for_async(
        lambda: _refusal(again), timeout=30, what="the page showing the refusal"
    )
    print(f"replayed URL: the page says {state['status']!r}")
    assert state["refusal"] == "Replayed", state
    assert (await _state(first))["state"] == "connected", "the first session is untouched"
    log = env.gateway_log.read_text(errors="replace")
    assert "refused Expired" in log and "refused Replayed" in log


async def _refusal(page: browser.Page) -> dict[str, str] | None:
    state = await _state(page)
    return state if state.get("refusal") else None


def _fresh_url(env: Env, desktop: Desktop, *, ttl: int = 300) -> str:
    """A claim URL with a token not used yet, minted as the controller mints them."""
    token = displaytokens.mint(_display_key(env), displaytokens.Grant(
        namespace=NS, claim=desktop.claim, claim_uid=desktop.claim_uid,
        expires_at=int(time.time()) + ttl, nonce=uuid.uuid4().hex,
    ))  # fmt: skip
    return displaytokens.desktop_url(env.gateway, token)


def _display_key(env: Env) -> bytes:
    secret = _get(env.dev, "secret", displaytokens.KEY_SECRET_NAME, ns=KEY_NS)
    return base64.b64decode(secret["data"][displaytokens.KEY_SECRET_FIELD])


async def test_a_view_only_viewer_cannot_type_and_the_user_can(
    env: Env, desktop: Desktop, chromium: browser.Browser, tmp_path: Path
) -> None:
    # The claim's own viewUrl for the viewer; the user's own URL was used by the first test.
    user = await _open(chromium, _fresh_url(env, desktop), expect="connected")
    viewer = await _open(chromium, desktop.view_url, expect="connected")
    # The page does not restrict a view-only viewer itself: the gateway must.
    assert await viewer.evaluate("window.rfb.viewOnly") is False
    before = desktop.console.read_text(errors="replace").count(TYPED)

    async def type_into(page: browser.Page, text: str) -> None:
        await page.send("Page.bringToFront")
        await page.evaluate("window.rfb.focus()")
        await page.type_text(text)

    await type_into(viewer, "viewer\n")
    await type_into(user, "alice1\n")
    await type_into(viewer, "shadow\n")
    await type_into(user, "alice2\n")

    def typed() -> list[str]:
        text = desktop.console.read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if TYPED in ln]
        return [ln.split(TYPED, 1)[1].rstrip("]\r") for ln in lines[before:]]

    testing.wait_for(lambda: "alice2" in typed(), timeout=60,
                     what="the user's second line on the guest's console", show=typed)  # fmt: skip
    print(f"\nthe guest read these lines from its console: {typed()}")
    assert typed() == ["alice1", "alice2"], "only the user's keys reached the guest"
    assert _lit(_screendump(env, desktop.vm, tmp_path), (0, 16 * 3, 720, 16 * 6)) > 0, (
        "the user's typing echoed on the guest's screen"
    )
    assert (await _state(viewer))["state"] == "connected", "the viewer stays connected"


def test_vnc_is_not_reachable_on_the_nodes_fabric_address(env: Env, desktop: Desktop) -> None:
    display = _get(env.dev, "virtualmachine", desktop.vm)["status"]["display"]
    assert display["host"] == "127.0.0.1", display
    node = env.dev.nodes[0]
    probe = subprocess.run(
        ["ip", "netns", "exec", nodeplans.fabric_netns_name(CLUSTER), "bash", "-c",
         f"exec 3<>/dev/tcp/{node.fabric_ip}/{display['port']}"],
        capture_output=True, check=False, timeout=30,
    )  # fmt: skip
    assert probe.returncode != 0, "the desktop's VNC answers on the fabric"
    inside = subprocess.run(
        ["ip", "netns", "exec", node.netns, "bash", "-c",
         f"exec 3<>/dev/tcp/127.0.0.1/{display['port']}"],
        capture_output=True, check=False, timeout=30,
    )  # fmt: skip
    assert inside.returncode == 0, "... while it listens on the node's loopback"
