"""Published-application sessions: a per-session X display on the gateway and the
application drawing on it from its server through ssh's X11 forwarding
(docs/gateway.md "Published applications").

One session per claim (namespace, name, UID), started at the claim's first admitted
websocket and kept across reconnects until the claim ends (the reaper re-reads each
session's claim every ``recheck`` seconds, with or without a viewer) or the
application exits. A session is three processes-and-sockets in a private directory:

- **Xvnc** (TigerVNC) on a display it picks itself (``-displayfd``), access controlled by
  a fresh MIT-MAGIC-COOKIE in the session's own Xauthority file, with its RFB on a unix
  socket in that directory (``-rfbunixpath``, mode 0600, no TCP port): only this process
  can reach it, and the websocket pump connects to it like to a desktop's VNC. No window
  manager, no desktop: the root window is black and the application's window is all
  there is.
- a **relay** on 127.0.0.1 (an ephemeral port) that dials the server's sshd with the
  gateway's :class:`dialing.Dialer` (inside the node's network namespace in the dev
  cluster, plain TCP otherwise) at the address ``kubevisor ssh`` uses
  (``sshtunnel.target_of``: the reported one, else the guest's link-local address on
  its tap's bridge).
- **ssh -Y** (trusted X11 forwarding: the display holds nothing but this application)
  to ``root@`` the server with the application key (``api/appservers``), ``DISPLAY``
  and ``XAUTHORITY`` pointing at the session's display, running the pool's command;
  ``-tt`` gives it a pty so the server's sshd hangs it up when the connection goes. The
  server's host key is checked (``StrictHostKeyChecking=yes``) against a known_hosts file
  of the session holding only the key derived for the server's pool
  (``appservers.host_key``): a server with another key is refused.

Ending a session terminates ssh (the server's sshd SIGHUPs the application, whose X
connection is gone as well) and Xvnc, closes the relay and removes the directory.
Blocking work is in subprocesses (asyncio) and one short thread reading the display
number; the event loop never waits on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from kubevisor.api import appservers, displaytokens
from kubevisor.gateway import admitting, dialing

log = logging.getLogger(__name__)

Key = tuple[str, str, str]
"""(namespace, claim, claim UID)."""
Standing = Callable[[displaytokens.Grant, admitting.Target], Awaitable[admitting.Refused | None]]
_START_TIMEOUT = 20.0
_PUMP = 64 * 1024


class SessionFailed(Exception):
    """The session's display or application could not be started."""


@dataclass
class Session:
    """One running published-application session."""

    key: Key
    grant: displaytokens.Grant
    target: admitting.Target
    workdir: Path
    display: int
    xvnc: asyncio.subprocess.Process
    ssh: asyncio.subprocess.Process | None = None
    relay: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def rfb_socket(self) -> Path:
        return self.workdir / "rfb.sock"


@dataclass
class Publisher:
    """The sessions of one gateway process."""

    dialer: dialing.Dialer
    app_key: Callable[[], Awaitable[bytes]]
    xvnc: str = "Xvnc"
    ssh: str = "ssh"
    xauth: str = "xauth"
    geometry: str = "1024x768"
    runtime_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))
    sessions: dict[Key, Session] = field(default_factory=dict)
    _locks: dict[Key, asyncio.Lock] = field(default_factory=dict)

    async def open(
        self, grant: displaytokens.Grant, target: admitting.Target
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A stream to the RFB of the claim's session, started when it has none."""
        key = (grant.namespace, grant.claim, grant.claim_uid)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            session = self.sessions.get(key)
            if session is not None and session.target.vm_name != target.vm_name:
                await self.end(key, why="the claim moved to another server")
                session = None
            if session is None:
                session = await self._start(key, grant, target)
                self.sessions[key] = session
        return await asyncio.open_unix_connection(str(session.rfb_socket))

    async def end(self, key: Key, *, why: str) -> None:
        """End the session: the application on its server, its display, its relay."""
        session = self.sessions.pop(key, None)
        self._locks.pop(key, None)
        if session is None:
            return
        log.info("application session %s/%s ends: %s", key[0], key[1], why)
        await self._stop(session)

    async def aclose(self) -> None:
        """End every session (the gateway stops)."""
        for key in list(self.sessions):
            await self.end(key, why="the gateway stops")

    async def reap(self, standing: Standing, *, every: float) -> None:
        """Forever: end the sessions whose claim ended, was replaced or moved."""
        while True:
            await asyncio.sleep(every)
            for key, session in list(self.sessions.items()):
                try:
                    ended = await standing(session.grant, session.target)
                except Exception as exc:  # an API hiccup is not the claim's end
                    log.warning("re-reading claim %s/%s failed: %s", key[0], key[1], exc)
                    continue
                if ended is not None:
                    await self.end(key, why=ended.message)

    async def _start(
        self, key: Key, grant: displaytokens.Grant, target: admitting.Target
    ) -> Session:
        workdir = Path(tempfile.mkdtemp(prefix="kv-app-", dir=self.runtime_dir))
        try:
            cookie = secrets.token_hex(16)
            xauthority = workdir / "Xauthority"
            await self._xauth(xauthority, ":0", cookie)  # loaded by Xvnc at start
            xvnc, display = await self._start_xvnc(workdir, xauthority)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        session = Session(key, grant, target, workdir, display, xvnc)
        try:
            await self._xauth(xauthority, f":{display}", cookie)  # read by ssh
            key_file = workdir / "id"
            app_key = await self.app_key()
            key_file.write_bytes(app_key)
            key_file.chmod(0o600)
            if not target.pool_uid:
                raise SessionFailed(f"server {target.vm_name} names no DesktopPool owner")
            _, host_public = appservers.host_key(app_key, target.pool_uid)
            (workdir / "known_hosts").write_text(appservers.known_hosts(host_public))
            session.relay = await asyncio.start_server(
                lambda r, w: self._relay(target, r, w), "127.0.0.1", 0
            )
            port = session.relay.sockets[0].getsockname()[1]
            session.ssh = await self._start_ssh(session, key_file, xauthority, port)
        except BaseException:
            await self._stop(session)
            raise
        watch = asyncio.create_task(self._watch(session))
        session.tasks.add(watch)
        log.info(
            "application session %s/%s on %s: display :%d, %r",
            key[0], key[1], target.vm_name, display, target.application,
        )  # fmt: skip
        return session

    async def _xauth(self, path: Path, display: str, cookie: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            self.xauth, "-q", "-f", str(path), "add", display, ".", cookie,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise SessionFailed(f"xauth: {err.decode(errors='replace').strip()}")

    async def _start_xvnc(
        self, workdir: Path, xauthority: Path
    ) -> tuple[asyncio.subprocess.Process, int]:
        read_end, write_end = os.pipe()
        try:
            log_file = (workdir / "Xvnc.log").open("wb")
            with log_file:
                xvnc = await asyncio.create_subprocess_exec(
                    self.xvnc, "-displayfd", str(write_end), "-auth", str(xauthority),
                    "-rfbunixpath", str(workdir / "rfb.sock"), "-rfbunixmode", "0600",
                    "-rfbport", "-1", "-SecurityTypes", "None", "-AlwaysShared",
                    "-nolisten", "tcp", "-geometry", self.geometry, "-depth", "24",
                    "-desktop", "application",
                    stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                    pass_fds=(write_end,),
                )  # fmt: skip
        finally:
            os.close(write_end)
        try:
            async with asyncio.timeout(_START_TIMEOUT):
                text = await asyncio.to_thread(_read_all, read_end)
                number = int(text.strip())
            if not (workdir / "rfb.sock").exists():  # made before the display is ready
                raise ValueError("no RFB socket")
        except (ValueError, TimeoutError) as exc:
            with contextlib.suppress(ProcessLookupError):
                xvnc.kill()
            await xvnc.wait()
            tail = (workdir / "Xvnc.log").read_text(errors="replace")[-400:]
            raise SessionFailed(f"Xvnc did not start: {tail}") from exc
        finally:
            os.close(read_end)
        return xvnc, number

    async def _start_ssh(
        self, session: Session, key_file: Path, xauthority: Path, port: int
    ) -> asyncio.subprocess.Process:
        command = session.target.application or ""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(session.workdir),
            "DISPLAY": f":{session.display}",
            "XAUTHORITY": str(xauthority),
        }
        log_file = (session.workdir / "ssh.log").open("wb")
        with log_file:
            return await asyncio.create_subprocess_exec(
                self.ssh, "-F", "/dev/null", "-Y", "-tt", "-i", str(key_file),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={session.workdir / 'known_hosts'}",
                "-o", f"HostKeyAlias={appservers.HOST_KEY_ALIAS}",
                "-o", "LogLevel=ERROR", "-o", "ServerAliveInterval=15",
                "-o", "ExitOnForwardFailure=yes",
                "-p", str(port), "-l", appservers.SSH_USER, "127.0.0.1",
                "--", "exec " + command if not command.startswith("exec ") else command,
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env,
            )  # fmt: skip

    async def _relay(
        self, target: admitting.Target, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One ssh connection: carried to the server's sshd through the dialer."""
        try:
            if target.tap is None:
                up_r, up_w = await self.dialer.open(
                    target.host, target.port, node_name=target.node_name
                )
            else:
                up_r, up_w = await self.dialer.open_on_bridge(
                    target.host, target.port, tap=target.tap, node_name=target.node_name
                )
        except (OSError, TimeoutError) as exc:
            log.warning("application server %s unreachable: %s", target.vm_name, exc)
            dialing.close_quietly(writer)
            return
        try:
            await asyncio.gather(_pump(reader, up_w), _pump(up_r, writer))
        except asyncio.CancelledError:
            # the loop is stopping: end quietly (asyncio's server logs a cancelled
            # connection handler as an error, in Python 3.11)
            return
        finally:
            dialing.close_quietly(up_w)
            dialing.close_quietly(writer)

    async def _watch(self, session: Session) -> None:
        """The application (ssh) or the display exited: the session is over."""
        waits = [asyncio.ensure_future(session.xvnc.wait())]
        if session.ssh is not None:
            waits.append(asyncio.ensure_future(session.ssh.wait()))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        if self.sessions.get(session.key) is session:
            log_text = (session.workdir / "ssh.log").read_text(errors="replace")[-300:]
            await self.end(session.key, why=f"the application exited {log_text.strip()!r}")

    async def _stop(self, session: Session) -> None:
        for task in session.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        for proc in (session.ssh, session.xvnc):
            if proc is None or proc.returncode is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if session.relay is not None:
            session.relay.close()
        shutil.rmtree(session.workdir, ignore_errors=True)


def _read_all(fd: int) -> str:
    """Read the display number Xvnc writes to ``-displayfd`` (a worker thread: blocks
    until Xvnc is ready or exits)."""
    chunks = []
    while chunk := os.read(fd, 64):
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks).decode()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(_PUMP):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        writer.write_eof()
