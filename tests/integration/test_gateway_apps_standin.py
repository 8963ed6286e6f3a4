"""Published applications through the real gateway process, a real API server, Debian's
headless Chromium and a **stand-in application server**: a real sshd in a network
namespace this test creates (standing for a server VM's guest; the e2e test runs the
same against a real Debian guest), running the host's xterm. The test plays the
controller: an Application DesktopPool, a "server" VM whose status says where its sshd
is (127.0.0.1 inside the namespace), two claims placed on it, tokens minted with
``api/displaytokens`` and the application key made by the controller's ``appkeys``.

Checks: each browser shows the application's window and nothing else; typing in one
session changes that one and leaves the other's canvas as it was; deleting a claim
ends its application process (seen from the "server": its processes) and leaves the
other running.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config

from kubevisor.api import appservers, displaytokens, groups
from kubevisor.controller.desktoppools import appkeys
from kubevisor.devenv import appscreens, browser, testing
from kubevisor.gateway import main as gateway_main

pytestmark = pytest.mark.integration

G, V = groups.GROUP, groups.VERSION
KEY = bytes(range(7, 39))
VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
LOGS = Path("/work/logs/gateway") if Path("/work/logs").is_dir() else Path("/tmp")
SERVER = "apps-server-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _apply(kind: str, ns: str, name: str, body: dict[str, Any]) -> Any:
    return {"apiVersion": f"{G}/{V}", "kind": kind, "metadata": {"name": name, "namespace": ns},
            **body}  # fmt: skip


@dataclass
class Setup:
    ns: str
    node: str
    marker: str
    gateway: str
    custom: client.CustomObjectsApi

    def url(self, claim: str, uid: str) -> str:
        grant = displaytokens.Grant(
            namespace=self.ns, claim=claim, claim_uid=uid, expires_at=int(time.time()) + 300,
            nonce=uuid.uuid4().hex, view_only=False,
        )  # fmt: skip
        return displaytokens.desktop_url(self.gateway, displaytokens.mint(KEY, grant))

    async def claim(self, name: str) -> str:
        obj = await self.custom.create_namespaced_custom_object(
            G, V, self.ns, "desktopclaims",
            {"apiVersion": f"{G}/{V}", "kind": "DesktopClaim", "metadata": {"name": name},
             "spec": {"poolRef": {"name": "apps"}, "user": name}},
        )  # fmt: skip
        await self.custom.patch_namespaced_custom_object_status(
            G, V, self.ns, "desktopclaims", name,
            _apply("DesktopClaim", self.ns, name, {"status": {"phase": "Bound",
                   "vmName": SERVER}}),
            field_manager="kubevisor-controller", force=True,
            _content_type="application/apply-patch+yaml",
        )  # fmt: skip
        return str(obj["metadata"]["uid"])


def _processes(marker: str) -> list[str]:
    """The application processes on the stand-in server (its xterms, by title)."""
    out = subprocess.run(["pgrep", "-a", "-f", f"^xterm -title {marker}"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    return out.stdout.splitlines()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A network namespace standing for the server's node, with an sshd config for its
    127.0.0.1:22 authorizing the application key; yields the node name (netns
    kvt-app-<node>). The sshd itself starts in ``setup``, once the pool exists: its host
    key is the pool's, derived from the pool's UID (``appservers.host_key``)."""
    testing.require_root("network namespaces")
    testing.require_tools("ip", "Xvnc", "ssh", "xauth", "xterm", "/usr/sbin/sshd")
    node = uuid.uuid4().hex[:8]
    netns = f"kvt-app-{node}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        Path("/run/sshd").mkdir(exist_ok=True)
        (tmp_path / "sshd_config").write_text(
            f"Port 22\nListenAddress 127.0.0.1\nHostKey {tmp_path}/hostkey\n"
            f"AuthorizedKeysFile {tmp_path}/authorized_keys\nPidFile {tmp_path}/sshd.pid\n"
            "X11Forwarding yes\nX11UseLocalhost yes\nPermitRootLogin prohibit-password\n"
            "StrictModes no\nUsePAM no\nXAuthLocation /usr/bin/xauth\n"
        )
        yield node
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


def _sshd(node: str, tmp_path: Path) -> contextlib.AbstractContextManager[Any]:
    """The stand-in server's sshd in the node's namespace (host key already written)."""
    netns = f"kvt-app-{node}"
    argv = ["ip", "netns", "exec", netns, "/usr/sbin/sshd", "-D", "-e",
            "-f", str(tmp_path / "sshd_config")]  # fmt: skip
    return testing.running_process(argv, log=LOGS / f"sshd-{netns}.log", what="sshd")


@pytest.fixture
async def setup(cluster: Any, server: str, tmp_path: Path) -> AsyncIterator[Setup]:
    if not (gateway_main.DEFAULT_NOVNC_DIR / "core" / "rfb.js").is_file():
        testing.absent(f"noVNC not in {gateway_main.DEFAULT_NOVNC_DIR} (hack/setup fetches it)")
    private, public = appkeys.generate()
    (tmp_path / "authorized_keys").write_bytes(public)
    marker = f"kvapp-{uuid.uuid4().hex[:8]}"
    async with await config.new_client_from_config(config_file=str(cluster.kubeconfig)) as api:
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        ns = f"apps-{uuid.uuid4().hex[:6]}"
        await core.create_namespace({"metadata": {"name": ns}})
        try:
            await core.create_namespaced_secret(
                ns,
                {
                    "metadata": {"name": displaytokens.KEY_SECRET_NAME},
                    "data": {displaytokens.KEY_SECRET_FIELD: base64.b64encode(KEY).decode()},
                },
            )
            await core.create_namespaced_secret(ns, appkeys.key_secret_body(private, public))
            pool = await custom.create_namespaced_custom_object(
                G,
                V,
                ns,
                "desktoppools",
                {
                    "apiVersion": f"{G}/{V}",
                    "kind": "DesktopPool",
                    "metadata": {"name": "apps"},
                    "spec": {
                        "templateRef": {"name": "appguest"},
                        "max": 1,
                        "mode": "Application",
                        "application": f"xterm -title {marker}",
                    },
                },
            )
            await custom.create_namespaced_custom_object(
                G,
                V,
                ns,
                "virtualmachines",
                {
                    "apiVersion": f"{G}/{V}",
                    "kind": "VirtualMachine",
                    "metadata": {
                        "name": SERVER,
                        # as the pool's own servers are: the gateway finds the host key by it
                        "ownerReferences": [
                            {
                                "apiVersion": f"{G}/{V}",
                                "kind": "DesktopPool",
                                "name": "apps",
                                "uid": pool["metadata"]["uid"],
                                "controller": True,
                            }
                        ],
                    },
                    "spec": {"memory": "128Mi", "disks": [{"name": "root", "size": "16Mi"}]},
                },
            )
            await custom.patch_namespaced_custom_object_status(
                G, V, ns, "virtualmachines", SERVER,
                _apply("VirtualMachine", ns, SERVER, {"status": {
                    "nodeName": server, "phase": "Running",
                    "interfaces": [{"name": "nic0", "ipAddress": "127.0.0.1"}]}}),
                field_manager="kubevisor-agent", force=True,
                _content_type="application/apply-patch+yaml",
            )  # fmt: skip
            port = _free_port()
            argv = [str(VENV_BIN / "kubevisor-gateway"), f"--kubeconfig={cluster.kubeconfig}",
                    f"--key-namespace={ns}", "--host=127.0.0.1", f"--port={port}",
                    "--display-netns=kvt-app-{node}", "--recheck-seconds=0.5"]  # fmt: skip
            log = LOGS / f"gateway-{ns}.log"
            host_private, _ = appservers.host_key(private, pool["metadata"]["uid"])
            (tmp_path / "hostkey").write_bytes(host_private)
            (tmp_path / "hostkey").chmod(0o600)
            with _sshd(server, tmp_path), testing.running_process(argv, log=log, what="gateway"):

                def up() -> bool:
                    with socket.socket() as s:
                        return s.connect_ex(("127.0.0.1", port)) == 0

                testing.wait_for(up, timeout=30, what="the gateway listening")
                yield Setup(ns, server, marker, f"http://127.0.0.1:{port}", custom)
        finally:
            await core.delete_namespace(ns)
            testing.wait_for(
                lambda: not _processes(marker), timeout=30,
                what="no application process left", show=lambda: _processes(marker),
            )  # fmt: skip


async def _state(page: browser.Page) -> str:
    return str(await page.evaluate("(document.body && document.body.dataset.state) || ''"))


async def test_published_app_two_sessions_on_a_standin_server_sshd_in_netns(
    setup: Setup, tmp_path: Path
) -> None:
    if not browser.CHROMIUM.exists():
        testing.absent(f"{browser.CHROMIUM} missing (hack/setup installs Debian's chromium)")
    uid_a, uid_b = await setup.claim("alice"), await setup.claim("bob")
    async with browser.chromium(log=LOGS / f"chromium-{setup.ns}.log") as b:
        pages = {}
        for claim, uid in (("alice", uid_a), ("bob", uid_b)):
            pages[claim] = page = await b.new_page(setup.url(claim, uid))

            async def connected(page: browser.Page = page) -> bool:
                return await _state(page) == "connected"

            await testing.wait_for_async(connected, timeout=60, what=f"{claim}'s page connected")
        shots = {claim: await appscreens.settled_window(page) for claim, page in pages.items()}
        for claim, shot in shots.items():
            shot.save(tmp_path / f"{claim}.png")
            print(f"\n{claim}: {appscreens.seen(shot)}")
        assert len(_processes(setup.marker)) == 2, "one application process per session"

        # alice types; her window changes, bob's canvas stays as it was
        await pages["alice"].send("Page.bringToFront")
        await appscreens.point_at(pages["alice"], 100, 100)
        await pages["alice"].evaluate("window.rfb.focus()")
        await pages["alice"].type_text("onlyalice\n")

        async def typed() -> bool:
            shot = await appscreens.canvas(pages["alice"])
            return bool(appscreens.changed(shot, shots["alice"]) > 50)

        await testing.wait_for_async(typed, timeout=30, what="alice's typing in her window")
        bob_now = await appscreens.canvas(pages["bob"])
        bob_now.save(tmp_path / "bob-after.png")
        (await appscreens.canvas(pages["alice"])).save(tmp_path / "alice-after.png")
        assert appscreens.changed(await appscreens.canvas(pages["alice"]), shots["alice"]) > 50
        assert appscreens.changed(bob_now, shots["bob"]) == 0, "bob's session shows alice's keys"
        assert appscreens.seen(await appscreens.canvas(pages["alice"])).only_a_window

        # ending alice's claim ends her application on the server, not bob's
        await setup.custom.delete_namespaced_custom_object(G, V, setup.ns, "desktopclaims", "alice")
        testing.wait_for(lambda: len(_processes(setup.marker)) == 1, timeout=30,
                         what="alice's application ended on the server",
                         show=lambda: _processes(setup.marker))  # fmt: skip

        async def alice_closed() -> bool:
            return await _state(pages["alice"]) == "disconnected"

        await testing.wait_for_async(alice_closed, timeout=30, what="alice's page disconnected")
        assert await _state(pages["bob"]) == "connected"
