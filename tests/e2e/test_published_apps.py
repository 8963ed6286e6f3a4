"""Published applications end to end: a dev cluster (one node), an Application
DesktopPool whose server is a real TCG guest of the Debian app image (sshd, xterm;
docs/dev/appguest.md), the controller (placement, the application key and the servers'
key Secret), the real gateway process, and Debian's headless Chromium.

The claims are made right after the pool: they stay unbound (Pending, WaitingForDesktop)
until the server's sshd is up (its GuestReady condition), and then the browser works on the
claim's first URL. Two claims on one server: each browser shows the application's window
and nothing else; what alice types changes her window and leaves bob's canvas as it was;
deleting alice's claim ends her xterm on the server (seen there, through ssh with the
application key) while bob's runs on.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.api import appservers, groups
from kubevisor.devenv import appguest, appscreens, browser, testing
from kubevisor.devenv import cluster as devcluster

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
CLUSTER = "kvapps"
NS = "default"
KEY_NS = "kubevisor-system"
POOL = "apps"
BOOT_S = 300.0
SERVER_IP = "10.77.0.120"
MARKER = f"kvapp-{uuid.uuid4().hex[:6]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
class Env:
    dev: devcluster.DevCluster
    gateway_log: Path


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    testing.require_root("a dev cluster (namespaces, mounts, libvirtd)")
    testing.require_tools("libvirtd", "qemu-system-x86_64", "Xvnc", "ssh", "xauth")
    appguest.require_app_guest()
    testing.require_module("PIL")
    if not browser.CHROMIUM.exists():
        testing.absent(f"{browser.CHROMIUM} missing (hack/setup installs Debian's chromium)")
    port = _free_port()
    saved = os.environ.get("KUBEVISOR_GATEWAY_URL")
    os.environ["KUBEVISOR_GATEWAY_URL"] = f"http://127.0.0.1:{port}"
    try:
        dev = devcluster.up(
            CLUSTER, nodes_count=1, stop_timeout=5.0, agent_args=("--address=127.0.0.1",)
        )
    except BaseException:
        devcluster.down(CLUSTER)
        raise
    finally:
        if saved is None:
            os.environ.pop("KUBEVISOR_GATEWAY_URL", None)
        else:
            os.environ["KUBEVISOR_GATEWAY_URL"] = saved
    try:
        # a static address for the test's own look at the server; the gateway finds the
        # server as kubevisor ssh does (no address reported yet: its link-local one)
        cmdline = appguest.kernel_cmdline(ip=f"{SERVER_IP}/24", hostname="appserver")
        _apply(dev, "VMTemplate", "appserver", appguest.machine_spec(key_secret=None,
                                                                   cmdline=cmdline))  # fmt: skip
        argv = [
            str(VENV_BIN / "kubevisor-gateway"), f"--kubeconfig={dev.kubeconfig}",
            f"--key-namespace={KEY_NS}", "--host=127.0.0.1", f"--port={port}",
            f"--display-netns=kv-{CLUSTER}-{{node}}", "--recheck-seconds=1",
        ]  # fmt: skip
        log = dev.cluster_dir / "logs" / "gateway.log"
        with testing.running_process(argv, log=log, what="gateway"):

            def up() -> bool:
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", port)) == 0

            testing.wait_for(up, timeout=30, what="the gateway listening")
            yield Env(dev=dev, gateway_log=log)
    finally:
        dev.run_kubectl("delete", "desktopclaims", "--all", "--wait=true", "--timeout=120s")
        dev.run_kubectl("delete", "desktoppool", POOL, "--ignore-not-found", "--wait=true",
                        "--timeout=60s")  # fmt: skip
        dev.run_kubectl("delete", "virtualmachines", "-l", f"{groups.LABEL_POOL}={POOL}",
                        "--wait=true", "--timeout=180s")  # fmt: skip
        devcluster.down(CLUSTER)


def _ssh(
    key: Path, known_hosts: Path, command: str, netns: str
) -> subprocess.CompletedProcess[str]:
    """``command`` on the application server over ssh from the node's namespace, the
    host checked as the gateway checks it (``StrictHostKeyChecking=yes`` against
    ``known_hosts`` under ``appservers.HOST_KEY_ALIAS``)."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, "ssh", "-F", "/dev/null", "-i", str(key),
         "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
         "-o", f"UserKnownHostsFile={known_hosts}",
         "-o", f"HostKeyAlias={appservers.HOST_KEY_ALIAS}", "-o", "LogLevel=ERROR",
         f"{appservers.SSH_USER}@{SERVER_IP}", command],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def _on_server(env: Env, sessions: Sessions, command: str) -> str:
    """``command`` on the application server (its host key checked)."""
    return _ssh(sessions.key, sessions.known_hosts, command, env.dev.nodes[0].netns).stdout


@dataclass(frozen=True)
class Sessions:
    urls: dict[str, str]
    key: Path
    """The application key's private half (to look at the server)."""
    known_hosts: Path
    """The server's host key as the gateway derives it for the pool."""
    pool_uid: str


@pytest.fixture(scope="module")
def sessions(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Sessions:
    _apply(env.dev, "DesktopPool", POOL,
           {"templateRef": {"name": "appserver"}, "min": 1, "max": 1, "spare": 0,
            "mode": "Application", "application": f"xterm -title {MARKER}",
            "tokenTtlSeconds": 600})  # fmt: skip
    for user in ("alice", "bob"):
        _apply(env.dev, "DesktopClaim", user, {"poolRef": {"name": POOL}, "user": user})

    early: list[str] = []
    """Claims seen Bound while their server's console had no ready line yet (must stay
    empty: a session binds only once the server's sshd is up, GuestReady)."""
    waited: list[str] = []

    def ready_line(server: str) -> bool:
        st = _get(env.dev, "virtualmachine", server).get("status") or {}
        log = Path(st.get("consoleLog") or "/nonexistent")
        return log.exists() and appguest.READY_MARKER in log.read_text(errors="replace")

    def bound() -> dict[str, str] | None:
        sts = {u: _get(env.dev, "desktopclaim", u).get("status") or {} for u in ("alice", "bob")}
        for user, st in sts.items():
            server = st.get("vmName")
            if st.get("phase") == "Bound" and server and not ready_line(server):
                early.append(user)
            if st.get("phase") == "Pending" and "sshd is not up yet" in _bound_message(st):
                waited.append(user)
        ok = all(st.get("phase") == "Bound" and st.get("url") for st in sts.values())
        return {u: st["url"] for u, st in sts.items()} if ok else None

    urls = testing.wait_for(
        bound, timeout=BOOT_S, what="both claims Bound", every=1.0,
        show=lambda: _get(env.dev, "desktoppool", POOL).get("status"),
    )  # fmt: skip
    server = _get(env.dev, "desktopclaim", "alice")["status"]["vmName"]
    assert _get(env.dev, "desktopclaim", "bob")["status"]["vmName"] == server
    assert not early, f"claims {early} were Bound before the server's sshd was up"
    vm_conds = (_get(env.dev, "virtualmachine", server).get("status") or {}).get("conditions")
    assert any(c["type"] == "GuestReady" and c["status"] == "True" for c in vm_conds or [])
    print(f"\nclaims seen waiting for the server's sshd: {sorted(set(waited))}")
    secret = _get(env.dev, "secret", appservers.KEY_SECRET_NAME, ns=KEY_NS)
    key = tmp_path_factory.mktemp("appkey") / "id"
    app_key = base64.b64decode(secret["data"][appservers.PRIVATE_KEY_FIELD])
    key.write_bytes(app_key)
    key.chmod(0o600)
    pool_uid = _get(env.dev, "desktoppool", POOL)["metadata"]["uid"]
    known = key.with_name("known_hosts")
    known.write_text(appservers.known_hosts(appservers.host_key(app_key, pool_uid)[1]))
    return Sessions(urls=urls, key=key, known_hosts=known, pool_uid=pool_uid)


def _bound_message(status: dict[str, Any]) -> str:
    conds = [c for c in status.get("conditions") or [] if c.get("type") == "Bound"]
    return str(conds[0].get("message") or "") if conds else ""


@pytest.fixture
async def chromium(env: Env) -> AsyncIterator[browser.Browser]:
    async with browser.chromium(log=env.gateway_log.with_name("chromium.log")) as b:
        yield b


async def _state(page: browser.Page) -> str:
    return str(await page.evaluate("(document.body && document.body.dataset.state) || ''"))


async def test_two_users_each_see_only_their_own_application(
    env: Env, sessions: Sessions, chromium: browser.Browser, tmp_path: Path
) -> None:
    pages = {}
    for user, url in sessions.urls.items():
        pages[user] = page = await chromium.new_page(url)

        async def settled(page: browser.Page = page) -> str | None:
            state = await _state(page)
            return state if state in ("connected", "disconnected") else None

        # the first URL the claim got works at once: no disconnect while the server boots
        state = await testing.wait_for_async(settled, timeout=90, what=f"{user}'s page")
        assert state == "connected", f"{user}'s page was disconnected on the claim's first URL"
    shots = {
        user: await appscreens.settled_window(page, within=120) for user, page in pages.items()
    }
    for user, shot in shots.items():
        shot.save(tmp_path / f"{user}.png")
        print(f"\n{user}: {appscreens.seen(shot)}")
        assert await _state(pages[user]) == "connected", f"{user}'s first URL was disconnected"

    def running() -> list[str]:
        out = _on_server(env, sessions, f"pgrep -a -f '^xterm -title {MARKER}'")
        return out.splitlines()

    assert len(running()) == 2, running()

    await appscreens.point_at(pages["alice"], 100, 100)
    await pages["alice"].evaluate("window.rfb.focus()")
    await pages["alice"].type_text("onlyalice\n")

    async def typed() -> bool:
        shot = await appscreens.canvas(pages["alice"])
        return bool(appscreens.changed(shot, shots["alice"]) > 50)

    await testing.wait_for_async(typed, timeout=60, what="alice's typing in her window")
    bob_now = await appscreens.canvas(pages["bob"])
    bob_now.save(tmp_path / "bob-after.png")
    assert appscreens.changed(bob_now, shots["bob"]) == 0, "bob's session shows alice's keys"
    assert appscreens.seen(await appscreens.canvas(pages["alice"])).only_a_window

    env.dev.run_kubectl("delete", "desktopclaim", "alice", "--wait=true", "--timeout=60s")
    testing.wait_for(lambda: len(running()) == 1, timeout=60, every=1.0,
                     what="alice's xterm ended on the server", show=running)  # fmt: skip

    async def alice_closed() -> bool:
        return await _state(pages["alice"]) == "disconnected"

    await testing.wait_for_async(alice_closed, timeout=30, what="alice's page disconnected")
    assert await _state(pages["bob"]) == "connected"


def test_the_servers_host_key_is_the_pools_and_another_is_refused(
    env: Env, sessions: Sessions
) -> None:
    """The server's sshd presents the host key derived for its pool (the controller put
    it in the pool's Secret, the guest's init installed it from the command line): ssh
    checking it as the gateway does connects; the key derived for another pool — a
    server that is not this one — is refused."""
    netns = env.dev.nodes[0].netns
    ok = _ssh(sessions.key, sessions.known_hosts, "echo serving", netns)
    assert ok.returncode == 0 and ok.stdout.strip() == "serving", ok.stderr
    secret = _get(env.dev, "secret", appservers.KEY_SECRET_NAME, ns=KEY_NS)
    app_key = base64.b64decode(secret["data"][appservers.PRIVATE_KEY_FIELD])
    wrong = sessions.known_hosts.with_name("wrong_known_hosts")
    wrong.write_text(appservers.known_hosts(appservers.host_key(app_key, "another-pool")[1]))
    refused = _ssh(sessions.key, wrong, "echo serving", netns)
    assert refused.returncode == 255 and "serving" not in refused.stdout
    assert "Host key verification failed" in refused.stderr, refused.stderr
