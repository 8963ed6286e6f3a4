"""The report of one pass: what the domain looks like now, as the agent's status fields.

:func:`assemble` is pure (scope + the domain as libvirt has it now -> a
:class:`statuses.Report`); :class:`Reporter` looks the domain up, builds the agent's
status with :func:`statuses.desired_status`, and applies it only when it changed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubevisor.agent import domainxml
from kubevisor.agent.kube import statuses as kubestatuses
from kubevisor.agent.libvirt import DomainInfo, Hypervisor
from kubevisor.agent.vms import statuses
from kubevisor.api import conditions, guestready, virtualmachines

if TYPE_CHECKING:
    from kubevisor.agent.vms.handling import Scope

Phase = statuses.Phase
#: Phases reported without a resolved machine (nothing to run).
_AT_REST = frozenset({Phase.STOPPED, *virtualmachines.GUEST_STOPPED})


def now_text() -> str:
    """Now, as status timestamps are written."""
    return conditions.format_time(datetime.now(UTC))


def _interfaces(
    scope: Scope, phase: Phase, live: domainxml.LiveFacts, addresses: Mapping[str, str]
) -> tuple[dict[str, Any], ...]:
    if scope.machine is None:
        return ()
    interfaces = []
    for nic in scope.machine.nics:
        entry: dict[str, Any] = {"name": nic.name, "network": nic.network}
        if nic.vlan is not None:
            entry["vlan"] = nic.vlan
        mac = live.macs.get(nic.name) or nic.mac
        if mac:
            entry["mac"] = mac.lower()
        if nic.name in live.taps and phase in statuses.UP:
            entry["tap"] = live.taps[nic.name]
            if mac and mac.lower() in addresses:
                entry["ipAddress"] = addresses[mac.lower()]
        interfaces.append(entry)
    return tuple(interfaces)


def assemble(
    scope: Scope,
    phase: Phase,
    *,
    fresh: DomainInfo | None,
    console_dir: Path,
    now: str,
    addresses: Mapping[str, str] | None = None,
    guest_ready: bool = False,
) -> statuses.Report:
    """What the agent reports for ``scope`` in ``phase`` (pure). ``fresh``: the domain as
    looked up after the pass's actions (None: none, or not looked up); ``addresses``: MAC
    -> guest address as the node's neighbour table knows it (the IP column);
    ``guest_ready``: the console log shows the guest's ready line (``api/guestready``)."""
    st = scope.status
    interfaces: tuple[dict[str, Any], ...] = ()
    display = None
    domain_uuid = st.get("domainUUID")
    if fresh is not None:
        domain_uuid = fresh.uuid
        live = domainxml.live_facts(fresh.xml)
        if live.vnc_port is not None and phase in statuses.UP:
            display = {"type": "vnc", "host": live.vnc_host, "port": live.vnc_port}
        interfaces = _interfaces(scope, phase, live, addresses or {})
    running_at = st.get("runningAt")
    if phase == Phase.RUNNING and (running_at is None or scope.started_at != st.get("startedAt")):
        running_at = now
    network_ready: bool | None = None
    network_reason: str | None = None
    network_message = ""
    if scope.machine is not None and scope.machine.nics and phase in statuses.UP:
        local = [s for s in scope.network_states if not s.uplinked]
        missing = [s.missing for s in scope.network_states if s.missing is not None]
        network_ready = not missing
        network_reason = missing[0] if missing else None
        network_message = "; ".join(s.message for s in local)
    console = console_dir / f"{scope.identity.domain_name}.log"
    report = statuses.Report(
        phase=phase,
        interfaces=interfaces,
        display=display,
        console_log=str(console)
        if scope.machine is not None and scope.machine.console.serial
        else None,
        domain_uuid=domain_uuid,
        started_at=scope.started_at,
        running_at=running_at,
        applied_restart_token=scope.applied_restart_token,
        applied_restore=scope.applied_restore,
        ready_reason=scope.ready_reason,
        message=scope.message,
        network_ready=network_ready,
        network_reason=network_reason,
        network_message=network_message,
        guest_ready=guest_ready and phase == Phase.RUNNING,
    )
    # NetworkReady is kept across passes: segment states are only known on ENSURE.
    previous = conditions.get_condition(
        st.get("conditions") or [], conditions.ConditionType.NETWORK_READY
    )
    if previous is not None and network_ready is not None and not scope.network_states:
        kept = previous.get("status") == "True"
        report = dataclasses.replace(
            report,
            network_ready=kept,
            network_reason=None if kept else str(previous.get("reason") or "") or None,
            network_message=str(previous.get("message", "")),
        )
    return report


class Reporter:
    """Applies the agent's status of a pass; ``on_written`` gets the object the write
    returned (the cache keeps it, so the next pass sees our own write)."""

    def __init__(
        self,
        hypervisor: Hypervisor,
        writer: kubestatuses.StatusWriter,
        *,
        console_dir: Path,
        on_written: Callable[[tuple[str, str], dict[str, Any]], None],
        addresses: Callable[[], Awaitable[dict[str, str]]] | None = None,
        recheck: Callable[[tuple[str, str], float], None] | None = None,
    ) -> None:
        self.hv = hypervisor
        self.writer = writer
        self.console_dir = console_dir
        self.on_written = on_written
        self.addresses = addresses
        """MAC -> guest address from the node (None: no addresses reported)."""
        self.recheck = recheck
        """Ask for another pass of a VM in so many seconds (looking for GuestReady)."""

    async def report(self, scope: Scope, phase: Phase) -> bool:
        """Apply the agent's status; True when it was written (not a no-op)."""
        assert scope.machine is not None or phase in _AT_REST
        fresh = None
        if phase in statuses.UP or scope.domain is not None:
            fresh = await self.hv.lookup(scope.identity.domain_name)
        addresses: dict[str, str] = {}
        if fresh is not None and phase in statuses.UP and self.addresses is not None:
            if scope.machine is not None and scope.machine.nics:
                addresses = await self.addresses()
        guest_ready = await self._guest_ready(scope, phase)
        report = assemble(
            scope,
            phase,
            fresh=fresh,
            console_dir=self.console_dir,
            now=now_text(),
            addresses=addresses,
            guest_ready=guest_ready,
        )
        if phase == Phase.RUNNING and not guest_ready and self.recheck is not None:
            if scope.machine is not None and scope.machine.console.serial:
                if guestready.keep_looking(_seconds_since(report.running_at)):
                    self.recheck(scope.key, guestready.RECHECK_SECONDS)
        generation = (scope.obj.get("metadata") or {}).get("generation")
        own = statuses.desired_status(
            report, current=scope.status, generation=generation, now=datetime.now(UTC)
        )
        if not statuses.needs_apply(own, scope.status):
            return False
        result = await self.writer.apply(namespace=scope.key[0], name=scope.key[1], own=own)
        if result is None:
            return False
        self.on_written(scope.key, result)
        return True

    async def _guest_ready(self, scope: Scope, phase: Phase) -> bool:
        """The console log shows the guest's ready line since it booted (a thread reads
        its tail); False when the VM does not run or logs no serial console."""
        if phase != Phase.RUNNING or scope.machine is None or not scope.machine.console.serial:
            return False
        path = self.console_dir / f"{scope.identity.domain_name}.log"
        text = await asyncio.to_thread(_tail, path, guestready.TAIL_BYTES)
        return guestready.ready_in(text)

    async def report_unavailable(self, scope: Scope) -> bool:
        """Apply phase ``Unknown`` with the scope's reason and message (the hypervisor is
        unreachable), keeping every other field the agent reported last: nothing about
        the domain is known, so nothing is taken back. True when written."""
        st = scope.status
        report = statuses.Report(
            phase=Phase.UNKNOWN,
            interfaces=tuple(st.get("interfaces") or ()),
            display=st.get("display"),
            console_log=st.get("consoleLog"),
            domain_uuid=st.get("domainUUID"),
            started_at=st.get("startedAt"),
            running_at=st.get("runningAt"),
            applied_restart_token=st.get("appliedRestartToken"),
            ready_reason=scope.ready_reason,
            message=scope.message,
        )
        generation = (scope.obj.get("metadata") or {}).get("generation")
        own = statuses.desired_status(
            report, current=st, generation=generation, now=datetime.now(UTC)
        )
        network = conditions.get_condition(
            st.get("conditions") or [], conditions.ConditionType.NETWORK_READY
        )
        if network is not None:
            own["conditions"].append(network)
        if not statuses.needs_apply(own, st):
            return False
        result = await self.writer.apply(namespace=scope.key[0], name=scope.key[1], own=own)
        if result is None:
            return False
        self.on_written(scope.key, result)
        return True


def _tail(path: Path, size: int) -> str:
    """The last ``size`` bytes of ``path`` as text ("" when it is missing; blocking)."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _seconds_since(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds()
    except ValueError:
        return None
