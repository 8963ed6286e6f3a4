"""``/ssh``: a byte stream to a VM's sshd for ``kubevisor ssh`` (docs/remote-access.md).

The CLI runs the system ``ssh`` with a ProxyCommand that opens this websocket; what
flows is the ssh protocol itself, so authentication (the user's key, which sshd in the
guest checks) and X11 forwarding are OpenSSH's own. The gateway only decides whether
to open the path: a live ticket on the VM (``api/vmaccess.check_ticket``: the user could
write the VM), used once, a Running VM on a node, and its first NIC. The address is the
NIC's ``status.interfaces[].ipAddress`` when one is reported, else the guest's IPv6
link-local address derived from its MAC on the bridge of its tap (``dialing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from kubevisor.api import vmaccess
from kubevisor.api.virtualmachines import VirtualMachinePhase
from kubevisor.gateway import dialing, metrics, replays

log = logging.getLogger(__name__)
_READ_SIZE = 64 * 1024


class VMs(Protocol):
    """The one read (``gateway.kube.reading.Reader.vm``)."""

    async def vm(self, namespace: str, name: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class Target:
    """Where the guest's sshd is: an address on the node, or a link-local one on the
    bridge of ``tap``."""

    node_name: str | None
    address: str
    tap: str | None
    """Set for a link-local address (its scope is the tap's bridge)."""


@dataclass(frozen=True)
class Refused:
    """Why the path is not opened (HTTP status, reason, sentence)."""

    status: int
    reason: str
    message: str


def target_of(vm: Mapping[str, Any]) -> Target | Refused:
    """Where to dial the VM's sshd, or why not (pure)."""
    status = vm.get("status") or {}
    name = (vm.get("metadata") or {}).get("name")
    phase = status.get("phase")
    if phase != VirtualMachinePhase.RUNNING:
        return Refused(409, "NotRunning", f"VirtualMachine {name} is {phase or 'not started'}")
    nics = [i for i in status.get("interfaces") or [] if isinstance(i, Mapping)]
    if not nics:
        return Refused(409, "NoInterface", f"VirtualMachine {name} reports no interface")
    nic = nics[0]
    node = status.get("nodeName")
    if nic.get("ipAddress"):
        return Target(node_name=node, address=str(nic["ipAddress"]), tap=None)
    if not nic.get("mac") or not nic.get("tap"):
        return Refused(409, "NoAddress", f"VirtualMachine {name} reports no address or tap")
    try:
        address = vmaccess.link_local(str(nic["mac"]))
    except ValueError as exc:
        return Refused(409, "NoAddress", str(exc))
    return Target(node_name=node, address=address, tap=str(nic["tap"]))


class SSHTunnel:
    """The ``/ssh`` route: admit by ticket, dial port 22, pump bytes both ways."""

    def __init__(
        self,
        vms: VMs,
        *,
        dialer: dialing.Dialer,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._vms = vms
        self._dialer = dialer
        self._clock = clock
        self._ledger = replays.NonceLedger()

    def install(self, app: web.Application) -> None:
        app.router.add_get(vmaccess.SSH_PATH, self._websocket)

    async def admit(self, query: Mapping[str, str]) -> Target | Refused:
        """The target for this request's namespace, VM and ticket, or why not."""
        namespace, name = query.get("namespace"), query.get("vm")
        secret = query.get(vmaccess.TICKET_QUERY) or ""
        if not namespace or not name:
            return Refused(400, "Malformed", "namespace and vm are required")
        vm = await self._vms.vm(namespace, name)
        if vm is None:
            return Refused(404, "VMNotFound", f"VirtualMachine {namespace}/{name} does not exist")
        now = self._clock()
        try:
            nonce, expires_at = vmaccess.check_ticket(
                (vm.get("metadata") or {}).get("annotations") or {}, secret, now=now
            )
        except vmaccess.TicketRefused as exc:
            return Refused(403, exc.reason, str(exc))
        found = target_of(vm)
        if isinstance(found, Refused):
            return found
        if not self._ledger.use(nonce, expires_at=expires_at, now=now):
            return Refused(403, "Replayed", "this ticket was used already")
        return found

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        decision = await self.admit(request.query)
        where = f"{request.query.get('namespace')}/{request.query.get('vm')}"
        if isinstance(decision, Refused):
            log.warning("ssh to %s refused %s: %s", where, decision.reason, decision.message)
            metrics.REFUSALS.labels(reason=decision.reason).inc()
            return web.Response(
                status=decision.status, text=f"{decision.reason}: {decision.message}\n"
            )
        try:
            if decision.tap is None:
                reader, writer = await self._dialer.open(
                    decision.address, vmaccess.SSH_PORT, node_name=decision.node_name
                )
            else:
                reader, writer = await self._dialer.open_on_bridge(
                    decision.address, vmaccess.SSH_PORT, tap=decision.tap,
                    node_name=decision.node_name,
                )  # fmt: skip
        except (OSError, TimeoutError) as exc:
            log.warning("ssh of %s unreachable: %s", where, exc)
            metrics.REFUSALS.labels(reason="SSHUnreachable").inc()
            return web.Response(status=502, text=f"SSHUnreachable: {exc}\n")
        ws = web.WebSocketResponse(heartbeat=30.0)
        try:
            await ws.prepare(request)
            log.info("ssh %s -> [%s]:22 (tap %s)", where, decision.address, decision.tap)
            await _pump(ws, reader, writer)
        finally:
            dialing.close_quietly(writer)
            await ws.close()
        return ws


async def _pump(
    ws: web.WebSocketResponse, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Bytes both ways until either side ends."""

    async def up() -> None:
        async for msg in ws:
            if msg.type is not WSMsgType.BINARY:
                return
            writer.write(msg.data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    async def down() -> None:
        while data := await reader.read(_READ_SIZE):
            await ws.send_bytes(data)

    tasks = {asyncio.create_task(up()), asyncio.create_task(down())}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
