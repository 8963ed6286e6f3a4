"""``kubevisor ssh VM [-X] [-- COMMAND]``: the system ``ssh`` to the VM's guest, through
the display gateway (docs/remote-access.md).

The CLI writes a short-lived ticket on the VM with the user's own Kubernetes
credentials (``api/vmaccess``: RBAC ``patch virtualmachines`` is the permission), then
runs OpenSSH with a ProxyCommand — this CLI's hidden ``_ssh-proxy`` verb — that opens
the gateway's ``/ssh`` websocket with the ticket's secret and carries ssh's bytes. So
``-X`` is OpenSSH's own X11 forwarding and the guest's sshd checks the user's key; the
gateway only decides whether the path opens. The secret travels to the ProxyCommand in
its environment, never on a command line; the ticket is removed when ssh ends.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from kubevisor.api import groups, kinds, vmaccess
from kubevisor.api.virtualmachines import VirtualMachinePhase

#: Where the gateway is, when ``--gateway`` is not given (the controller's variable).
ENV_GATEWAY = "KUBEVISOR_GATEWAY_URL"
#: How the ticket's secret reaches the ProxyCommand.
ENV_TICKET = "KUBEVISOR_SSH_TICKET"
#: How long a ticket lives: ssh connects within a second or two of it being written.
TICKET_SECONDS = 60


class SSHError(Exception):
    """Why ``kubevisor ssh`` cannot start; the sentence says how to fix it."""


def preflight(vm: Mapping[str, Any]) -> None:
    """Refuse early, with the fix, what the gateway or the guest would refuse (pure)."""
    meta, status = vm.get("metadata") or {}, vm.get("status") or {}
    name, ns = meta.get("name"), meta.get("namespace")
    access = ((status.get("machine") or {}).get("access")) or {}
    if not access.get("sshKeySecret"):
        raise SSHError(
            f"VirtualMachine {name} has no access.sshKeySecret, so its guest authorizes no"
            f" key: create a Secret with your public key (kubectl create secret generic"
            f" {name}-ssh -n {ns} --from-file=authorized_keys=$HOME/.ssh/id_ed25519.pub),"
            f" set spec.access.sshKeySecret: {name}-ssh and restart the VM"
        )
    phase = status.get("phase")
    if phase != VirtualMachinePhase.RUNNING:
        raise SSHError(
            f"VirtualMachine {name} is {phase or 'not started yet'}, not Running; start it"
            f" (kubevisor start {name} -n {ns}) and wait until it runs"
        )


def gateway_url(flag: str | None, environ: Mapping[str, str]) -> str:
    """The gateway's base URL: ``--gateway``, else ``$KUBEVISOR_GATEWAY_URL`` (pure)."""
    url = flag or environ.get(ENV_GATEWAY)
    if not url:
        raise SSHError(
            f"where is the display gateway? pass --gateway https://HOST:PORT or set {ENV_GATEWAY}"
        )
    return url.rstrip("/")


def tunnel_url(gateway: str, namespace: str, name: str, secret: str) -> str:
    """The ``/ssh`` websocket URL (pure)."""
    base = "ws" + gateway[4:] if gateway.startswith("http") else gateway
    query = urlencode({"namespace": namespace, "vm": name, vmaccess.TICKET_QUERY: secret})
    return f"{base}{vmaccess.SSH_PATH}?{query}"


def ssh_argv(
    vm: Mapping[str, Any],
    *,
    proxy: list[str],
    x11: bool,
    identity: str | None,
    user: str,
    known_hosts: Path,
    command: list[str],
) -> list[str]:
    """The OpenSSH command line (pure). The host key is remembered under an alias naming
    the VM and its UID, so a re-created VM of the same name is a new host."""
    meta = vm["metadata"]
    alias = f"{meta['name']}.{meta['namespace']}.{str(meta.get('uid', ''))[:8]}.kubevisor"
    argv = [
        "ssh",
        "-o", f"ProxyCommand={shlex.join(proxy)}",
        "-o", f"HostKeyAlias={alias}",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "StrictHostKeyChecking=accept-new",
        "-l", user,
    ]  # fmt: skip
    if x11:
        argv.append("-X")
    if identity:
        argv += ["-i", identity, "-o", "IdentitiesOnly=yes"]
    argv.append(alias)
    if command:
        argv += ["--", *command]
    return argv


def ssh(api: Any, vm: dict[str, Any], args: argparse.Namespace) -> int:
    """Write the ticket, run ssh, remove the ticket; ssh's exit status."""
    preflight(vm)
    meta = vm["metadata"]
    ns, name = meta["namespace"], meta["name"]
    gateway = gateway_url(args.gateway, os.environ)
    secret = secrets.token_urlsafe(32)
    key, value = vmaccess.ticket_annotation(secret, expires_at=int(time.time()) + TICKET_SECONDS)
    plural = kinds.VIRTUALMACHINE.plural
    api.patch_namespaced_custom_object(
        groups.GROUP, groups.VERSION, ns, plural, name, {"metadata": {"annotations": {key: value}}}
    )
    proxy = [sys.executable, "-m", "kubevisor.cli.main", "_ssh-proxy", "--gateway", gateway,
             "-n", ns, name]  # fmt: skip
    known = Path(args.known_hosts or Path.home() / ".ssh" / "kubevisor_known_hosts")
    known.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    argv = ssh_argv(vm, proxy=proxy, x11=args.x11, identity=args.identity, user=args.login,
                    known_hosts=known, command=args.command)  # fmt: skip
    try:
        return _run_forwarding_signals(argv, env={**os.environ, ENV_TICKET: secret})
    except FileNotFoundError as exc:
        raise SSHError(
            "the ssh client is not installed (Debian: apt-get install openssh-client)"
        ) from exc
    finally:
        try:
            api.patch_namespaced_custom_object(
                groups.GROUP, groups.VERSION, ns, plural, name,
                {"metadata": {"annotations": {key: None}}},
            )  # fmt: skip
        except Exception as exc:  # the ticket expires anyway
            print(f"kubevisor: could not remove the ssh ticket ({exc})", file=sys.stderr)


def _run_forwarding_signals(argv: list[str], *, env: dict[str, str]) -> int:
    """Run ``argv`` and return its exit status; SIGTERM and SIGHUP sent to us go to it
    (so stopping ``kubevisor ssh`` ends the ssh session, and its X clients, instead of
    leaving ssh running), and the ticket is still removed afterwards."""
    child = subprocess.Popen(argv, env=env)
    forwarded = (signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda s, _f: child.send_signal(s)) for sig in forwarded}
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # ssh got the terminal's SIGINT itself
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def proxy(args: argparse.Namespace) -> int:
    """The ProxyCommand: stdin/stdout <-> the gateway's ``/ssh`` websocket."""
    secret = os.environ.get(ENV_TICKET)
    if not secret:
        print(f"kubevisor _ssh-proxy: {ENV_TICKET} is not set (run kubevisor ssh)", file=sys.stderr)
        return 2
    url = tunnel_url(args.gateway.rstrip("/"), args.namespace, args.name, secret)
    return asyncio.run(_pump(url, f"{args.namespace}/{args.name}"))


async def _pump(url: str, what: str) -> int:
    import aiohttp

    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin.buffer)
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(url, autoping=True, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            async with session.get(url) as resp:
                why = (await resp.text()).strip()
            print(f"kubevisor: the gateway refused ssh to {what} (HTTP {exc.status}): {why}",
                  file=sys.stderr)  # fmt: skip
            return 255
        except aiohttp.ClientError as exc:
            print(f"kubevisor: cannot reach the gateway for {what}: {exc}", file=sys.stderr)
            return 255

        async def up() -> None:
            while data := await stdin.read(64 * 1024):
                await ws.send_bytes(data)
            await ws.close()

        async def down() -> None:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    view = memoryview(msg.data)
                    while view:
                        view = view[os.write(1, view) :]
                else:
                    return

        tasks = {asyncio.create_task(up()), asyncio.create_task(down())}
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await ws.close()
    return 0
