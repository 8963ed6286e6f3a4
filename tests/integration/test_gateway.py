"""The display gateway (``kubevisor-gateway``, the real process) against a real
kube-apiserver and a real VNC server (QEMU's, ``-machine none``: no guest, the display
server only).

The test plays the controller: it creates the DesktopClaim and its VM, writes their status
(claim Bound to the VM, the VM's display) and mints the tokens with
``api/displaytokens``. The QEMU runs in a network namespace of its own with VNC on that
namespace's loopback, as a desktop's VNC listens inside its node (the dev cluster's
layout); the gateway reaches it with ``--display-netns``, and nothing in the host's
namespace can.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config

from kubevisor.api import displaytokens, groups
from kubevisor.devenv import scraping, testing
from kubevisor.devenv.rfbclient import RFBClient
from kubevisor.gateway import main as gateway_main

pytestmark = pytest.mark.integration

G, V = groups.GROUP, groups.VERSION
KEY = bytes(range(100, 132))
VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
LOGS = Path("/work/logs/gateway") if Path("/work/logs").is_dir() else Path("/tmp")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def api(cluster: Any) -> AsyncIterator[client.ApiClient]:
    async with await config.new_client_from_config(config_file=str(cluster.kubeconfig)) as c:
        yield c


@dataclass
class Desk:
    """The test's stand-in for the controller: namespace, claims, VMs, tokens."""

    api: client.ApiClient
    ns: str
    node: str
    """The 'node' whose namespace the VNC listens in (netns kvt-gw-<node>)."""

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    async def claim(self, name: str, *, phase: str | None = "Bound", vm: str = "desk-1") -> str:
        """Create (or re-create) claim ``name`` bound to ``vm``; its UID."""
        obj = await self.custom.create_namespaced_custom_object(
            G, V, self.ns, "desktopclaims",
            {"apiVersion": f"{G}/{V}", "kind": "DesktopClaim", "metadata": {"name": name},
             "spec": {"poolRef": {"name": "office"}, "user": "alice"}},
        )  # fmt: skip
        if phase is not None:
            await self.claim_status(name, phase=phase, vm=vm)
        return str(obj["metadata"]["uid"])

    async def claim_status(self, name: str, *, phase: str, vm: str) -> None:
        await self.custom.patch_namespaced_custom_object_status(
            G, V, self.ns, "desktopclaims", name,
            {"apiVersion": f"{G}/{V}", "kind": "DesktopClaim",
             "metadata": {"name": name, "namespace": self.ns},
             "status": {"phase": phase, "vmName": vm}},
            field_manager="kubevisor-controller", force=True,
            _content_type="application/apply-patch+yaml",
        )  # fmt: skip

    async def delete_claim(self, name: str) -> None:
        await self.custom.delete_namespaced_custom_object(G, V, self.ns, "desktopclaims", name)

    async def vm(self, name: str, *, port: int) -> None:
        await self.custom.create_namespaced_custom_object(
            G, V, self.ns, "virtualmachines",
            {"apiVersion": f"{G}/{V}", "kind": "VirtualMachine", "metadata": {"name": name},
             "spec": {"memory": "128Mi", "disks": [{"name": "root", "size": "16Mi"}]}},
        )  # fmt: skip
        await self.custom.patch_namespaced_custom_object_status(
            G, V, self.ns, "virtualmachines", name,
            {"apiVersion": f"{G}/{V}", "kind": "VirtualMachine",
             "metadata": {"name": name, "namespace": self.ns},
             "status": {"nodeName": self.node, "phase": "Running",
                        "display": {"type": "vnc", "host": "127.0.0.1", "port": port}}},
            field_manager="kubevisor-agent", force=True,
            _content_type="application/apply-patch+yaml",
        )  # fmt: skip

    def token(
        self, claim: str, uid: str, *, ttl: int = 300, view_only: bool = False, key: bytes = KEY
    ) -> str:
        grant = displaytokens.Grant(
            namespace=self.ns, claim=claim, claim_uid=uid,
            expires_at=int(time.time()) + ttl, nonce=uuid.uuid4().hex, view_only=view_only,
        )  # fmt: skip
        return displaytokens.mint(key, grant)


@pytest.fixture
def node_netns() -> Iterator[str]:
    """A network namespace standing for a node: loopback up, nothing else."""
    testing.require_root("network namespaces")
    testing.require_tools("ip", "qemu-system-x86_64")
    node = uuid.uuid4().hex[:8]
    netns = f"kvt-gw-{node}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        yield node
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


@pytest.fixture
def vnc(node_netns: str) -> Iterator[int]:
    """QEMU's VNC server on 127.0.0.1:5900 inside the node's namespace; the port."""
    netns = f"kvt-gw-{node_netns}"
    argv = ["ip", "netns", "exec", netns, "qemu-system-x86_64", "-nodefaults", "-machine",
            "none", "-display", "none", "-vnc", "127.0.0.1:0"]  # fmt: skip
    with testing.running_process(argv, log=LOGS / f"qemu-{netns}.log", what="qemu vnc"):

        def listening() -> bool:
            probe = subprocess.run(
                ["ip", "netns", "exec", netns, "bash", "-c", "echo > /dev/tcp/127.0.0.1/5900"],
                capture_output=True, check=False,
            )  # fmt: skip
            return probe.returncode == 0

        testing.wait_for(listening, timeout=30, what="QEMU's VNC listening in the netns")
        yield 5900


@pytest.fixture
async def desk(api: client.ApiClient, node_netns: str) -> AsyncIterator[Desk]:
    core = client.CoreV1Api(api)
    ns = f"gw-{uuid.uuid4().hex[:6]}"
    await core.create_namespace({"metadata": {"name": ns}})
    await core.create_namespaced_secret(
        ns,
        {"metadata": {"name": displaytokens.KEY_SECRET_NAME},
         "data": {displaytokens.KEY_SECRET_FIELD: base64.b64encode(KEY).decode()}},
    )  # fmt: skip
    try:
        yield Desk(api=api, ns=ns, node=node_netns)
    finally:
        await core.delete_namespace(ns)


@dataclass(frozen=True)
class Gateway:
    base: str
    """http(s)://127.0.0.1:<port>"""
    ssl: Any = None
    metrics_port: int = 0
    """Its --metrics-port (Prometheus exposition, plain HTTP on loopback)."""

    def metrics(self) -> dict[Any, float]:
        return scraping.scrape(self.metrics_port)

    def ws_url(self, token: str) -> str:
        return self.base.replace("http", "ws", 1) + "/" + displaytokens.websocket_path(token)


@contextlib.contextmanager
def running_gateway(
    cluster: Any, desk: Desk, *, tls: tuple[Path, Path] | None = None
) -> Iterator[Gateway]:
    if not (gateway_main.DEFAULT_NOVNC_DIR / "core" / "rfb.js").is_file():
        testing.absent(f"noVNC not in {gateway_main.DEFAULT_NOVNC_DIR} (hack/setup fetches it)")
    port, metrics_port = _free_port(), _free_port()
    argv = [
        str(VENV_BIN / "kubevisor-gateway"), f"--kubeconfig={cluster.kubeconfig}",
        f"--key-namespace={desk.ns}", "--host=127.0.0.1", f"--port={port}",
        "--display-netns=kvt-gw-{node}", "--recheck-seconds=0.5",
        f"--metrics-port={metrics_port}",
    ]  # fmt: skip
    scheme = "http"
    if tls is not None:
        argv += [f"--tls-cert={tls[0]}", f"--tls-key={tls[1]}"]
        scheme = "https"
    with testing.running_process(argv, log=LOGS / f"gateway-{desk.ns}.log", what="gateway"):

        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        testing.wait_for(up, timeout=30, what="the gateway listening")
        yield Gateway(base=f"{scheme}://127.0.0.1:{port}", metrics_port=metrics_port)


@pytest.fixture
def gw(cluster: Any, desk: Desk) -> Iterator[Gateway]:
    """The gateway process, plain HTTP."""
    with running_gateway(cluster, desk) as gateway:
        yield gateway


@pytest.fixture
def tls_gw(cluster: Any, desk: Desk, tmp_path: Path) -> Iterator[Gateway]:
    """The gateway process behind TLS (a self-signed certificate for 127.0.0.1)."""
    testing.require_tools("openssl")
    cert, key = tmp_path / "gw.crt", tmp_path / "gw.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    with running_gateway(cluster, desk, tls=(cert, key)) as gateway:
        yield dataclasses.replace(gateway, ssl=ssl.create_default_context(cafile=str(cert)))


async def _refusal(gw: Gateway, token: str) -> tuple[int, str]:
    """Status and body of the websocket path for ``token`` (a plain GET: the gateway
    decides before upgrading, so the reason is readable)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.ws_url(token).replace("ws", "http", 1)) as resp:
            return resp.status, await resp.text()


async def test_an_admitted_token_carries_rfb_to_the_desktops_vnc(
    gw: Gateway, desk: Desk, vnc: int
) -> None:
    uid = await desk.claim("alice")
    await desk.vm("desk-1", port=vnc)
    token = desk.token("alice", uid)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.base}/vnc.html") as page:
            assert page.status == 200
            assert "core/rfb.js" in await page.text()
        async with http.get(f"{gw.base}/core/rfb.js") as rfb_js:
            assert rfb_js.status == 200  # the pinned npm package, served
        async with http.ws_connect(gw.ws_url(token)) as ws:
            rfb = RFBClient(ws)
            init = await rfb.handshake()  # starts with the "RFB 003.008" greeting
            assert init.width > 0 and init.height > 0
            await rfb.request_update()
            assert await rfb.framebuffer_update() >= 1
            scraped = gw.metrics()
            assert scraping.value(scraped, "kubevisor_gateway_sessions_open") == 1
            assert scraping.value(scraped, "kubevisor_gateway_sessions_total") == 1
        testing.wait_for(
            lambda: scraping.value(gw.metrics(), "kubevisor_gateway_sessions_open") == 0,
            timeout=10,
            what="the session closed in the gateway's metrics",
        )


async def test_unknown_expired_replayed_and_ended_claim_tokens_are_refused(
    gw: Gateway, desk: Desk, vnc: int
) -> None:
    uid = await desk.claim("alice")
    await desk.vm("desk-1", port=vnc)
    pending_uid = await desk.claim("bob", phase="Pending")
    released_uid = await desk.claim("carol", phase="Released")
    gone_uid = await desk.claim("dave")
    await desk.delete_claim("dave")
    old_uid = await desk.claim("erin")
    await desk.delete_claim("erin")
    await desk.claim("erin")  # same name, new object: the old token must not admit
    used = desk.token("alice", uid)
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.ws_url(used)) as ws:
        assert (await RFBClient(ws).read(12)) == b"RFB 003.008\n"
    cases = {
        "Malformed": "not-a-token",
        "BadSignature": desk.token("alice", uid, key=bytes(range(32))),
        "Expired": desk.token("alice", uid, ttl=-1),
        "Replayed": used,
        "ClaimNotBound": desk.token("bob", pending_uid),
        "ClaimNotFound": desk.token("dave", gone_uid),
        "ClaimReplaced": desk.token("erin", old_uid),
    }
    seen = {reason: await _refusal(gw, token) for reason, token in cases.items()}
    seen["ClaimNotBound (released)"] = await _refusal(gw, desk.token("carol", released_uid))
    for reason, (status, body) in seen.items():
        assert status == 403, (reason, status, body)
        assert body.startswith(reason.split(" ")[0] + ":"), (reason, body)
    # A refused websocket handshake is a 403 for a browser too.
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(gw.ws_url(desk.token("alice", uid, ttl=-1)))
        assert refused.value.status == 403
    scraped = gw.metrics()
    want = {reason: 1 for reason in cases}
    want.update({"ClaimNotBound": 2, "Expired": 2})  # the released claim; the handshake
    got = {r: scraping.value(scraped, "kubevisor_gateway_refusals_total", reason=r) for r in want}
    assert got == want


async def test_a_session_ends_when_its_claim_ends(gw: Gateway, desk: Desk, vnc: int) -> None:
    uid = await desk.claim("alice")
    await desk.vm("desk-1", port=vnc)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(gw.ws_url(desk.token("alice", uid))) as ws:
            rfb = RFBClient(ws)
            await rfb.handshake()
            await desk.delete_claim("alice")
            with pytest.raises((EOFError, ConnectionError)):
                while True:  # frames until the gateway closes (within rfb.timeout)
                    await rfb.request_update(incremental=True)
                    await rfb.read(1)
            assert ws.close_code == 1008


async def test_a_view_only_viewer_joins_without_disconnecting_the_user(
    gw: Gateway, desk: Desk, vnc: int
) -> None:
    """The viewer asks for an exclusive session (ClientInit shared=0, which makes QEMU drop
    every other client); the gateway makes it shared, so the user keeps the desktop."""
    uid = await desk.claim("alice")
    await desk.vm("desk-1", port=vnc)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(gw.ws_url(desk.token("alice", uid))) as user_ws:
            user = RFBClient(user_ws)
            await user.handshake()
            viewer_url = gw.ws_url(desk.token("alice", uid, view_only=True))
            async with http.ws_connect(viewer_url) as viewer_ws:
                viewer = RFBClient(viewer_ws)
                await viewer.handshake(shared=False)
                await viewer.request_update()
                assert await viewer.framebuffer_update() >= 1
                await user.request_update()
                assert await user.framebuffer_update() >= 1  # still connected


async def test_tls(tls_gw: Gateway, desk: Desk, vnc: int) -> None:
    uid = await desk.claim("alice")
    await desk.vm("desk-1", port=vnc)
    assert tls_gw.base.startswith("https://")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served
            await http.get(tls_gw.base.replace("https", "http", 1) + "/healthz")
        token = desk.token("alice", uid)
        async with http.ws_connect(tls_gw.ws_url(token), ssl=tls_gw.ssl) as ws:
            assert (await RFBClient(ws).read(12)) == b"RFB 003.008\n"


async def test_the_session_is_reported_in_the_claims_status(
    gw: Gateway, desk: Desk, vnc: int
) -> None:
    """A full viewer's connect, input and disconnect land in status.session (what the
    controller's idle and disconnected timeouts read); a view-only viewer's do not."""
    uid = await desk.claim("alice")
    await desk.vm("desk-1", port=vnc)

    async def session() -> dict[str, Any]:
        obj = await desk.custom.get_namespaced_custom_object(
            G, V, desk.ns, "desktopclaims", "alice"
        )
        return dict((obj.get("status") or {}).get("session") or {})

    async def until(what: str, check: Any) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            s = await session()
            return s if check(s) else None

        return await testing.wait_for_async(probe, timeout=20, what=what, show=session)

    async with aiohttp.ClientSession() as http:
        viewer_url = gw.ws_url(desk.token("alice", uid, view_only=True))
        async with http.ws_connect(viewer_url) as viewer_ws:
            viewer = RFBClient(viewer_ws)
            await viewer.handshake()
            await viewer.type_text("x")
            await viewer.request_update()
            await viewer.framebuffer_update()
        assert await session() == {}, "a view-only viewer is not reported"
        async with http.ws_connect(gw.ws_url(desk.token("alice", uid))) as ws:
            rfb = RFBClient(ws)
            await rfb.handshake()
            s = await until("connected", lambda s: s.get("connected") is True)
            assert s.get("lastConnectedAt") and "lastInputAt" not in s
            await rfb.type_text("a")
            s = await until("input", lambda s: s.get("lastInputAt"))
            assert s["connected"] is True
    s = await until("disconnected", lambda s: s.get("connected") is False)
    assert s.get("lastDisconnectedAt") and s.get("lastInputAt") and s.get("lastConnectedAt")
    obj = await desk.custom.get_namespaced_custom_object(G, V, desk.ns, "desktopclaims", "alice")
    managers = {f["manager"] for f in obj["metadata"]["managedFields"]}
    assert "kubevisor-gateway" in managers, managers
