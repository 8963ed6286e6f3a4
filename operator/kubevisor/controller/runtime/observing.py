"""Metrics read from what the API server reports: VMs by phase, VM start latency, and
migration figures, fed by watch events of their own (``Observer.handlers``); and the
Events of phase changes no handler posts itself (a VM's phases are mostly the agents'
writes; a VRF turning Ready is the sum of the agents' per-node entries).

Why from watch events and not from the kinds' handlers: the phase a user sees is in
``status``, written by the controller and the agents alike, and the migration figures
(``totalTimeMs``, ``downtimeMs``) are the source agent's measurements; counting where
the status lands counts every writer once, and no kind's handler has to remember to.
kopf shares one watch per resource between handlers, so this costs no extra watch.

Rules (pure, ``Observer`` holds only the last phase per object):

- a VM counts in ``kubevisor_controller_vms{phase}`` under its current ``status.phase``
  (``""`` before anyone wrote one) until it is deleted;
- its start clock starts when it is first seen in a phase on the way to Running
  (``STARTING_PHASES``) and stops at Running, observed once; a VM seen Running in the
  initial listing is not timed (the controller did not see it start);
- a migration seen entering a final phase after the initial listing is counted once by
  phase, and a Succeeded one observes its ``totalTimeMs`` and ``downtimeMs``. Migrations
  already final when the controller starts were counted by the process before it;
- an Event for a VM or VRF entering a phase ``api/eventreasons.PHASES`` gives this watch
  (``OBSERVER``: Starting, Running, Stopped, Failed... for a VM; Ready for a VRF), only
  for a change this process saw (the phase before is known and differs): a restarted
  controller does not repeat them. The phases the VM handler announces itself
  (Scheduled) and the transient ones are left out; migrations, backups and claims post
  their own Events at every phase.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from kubevisor.api import eventreasons, kinds, migrations, virtualmachines
from kubevisor.controller import metrics
from kubevisor.controller.kube import operating

Phase = virtualmachines.VirtualMachinePhase
VM = kinds.VIRTUALMACHINE.kind

#: Phases a VM passes on its way to Running (its start clock runs through these).
STARTING_PHASES = frozenset({"", Phase.PENDING, Phase.SCHEDULING, Phase.SCHEDULED, Phase.STARTING})


class Post(Protocol):
    """``runtime.events.Recorder.post``."""

    def __call__(
        self, obj: dict[str, Any], *, kind: str, type_: str, reason: str, message: str
    ) -> None: ...


def vm_event(old: str | None, new: str, node: str | None) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Event for a VM whose phase went ``old`` -> ``new``
    (``old`` None: not seen before by this process), or None: the phases
    ``api/eventreasons`` gives this watch (pure)."""
    found = eventreasons.phase_event(VM, old, new, by=eventreasons.OBSERVER)
    if found is None:
        return None
    where = f" on node {node}" if node else ""
    return found[0], found[1], f"phase {old or 'none'} -> {new}{where}."


def vrf_event(old: str | None, new: str, ready_nodes: str | None) -> tuple[str, str, str] | None:
    """The Event for a VRF that became Ready (other phases come with the Warning of their
    reason from the VRF handler and the agents), or None (pure)."""
    found = eventreasons.phase_event(kinds.VRF.kind, old, new, by=eventreasons.OBSERVER)
    if found is None:
        return None
    return found[0], found[1], f"realized on {ready_nodes or 'every selected'} nodes."


def _phase(body: dict[str, Any]) -> str:
    return str((body.get("status") or {}).get("phase") or "")


class Observer:
    """Keeps the VM phase gauge and the start/migration histograms (module docstring)."""

    def __init__(
        self, *, post: Post | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._post = post
        self._clock = clock
        self.phases: dict[tuple[str, str], str] = {}
        """The last phase of each VM seen."""
        self.starting: dict[tuple[str, str], float] = {}
        """When each VM on its way to Running was first seen so (clock seconds)."""
        self.final: set[tuple[str, str]] = set()
        """Migrations already counted as ended."""
        self.vrf_phases: dict[tuple[str, str], str] = {}

    async def on_vm(
        self, type_: str | None, namespace: str, name: str, body: dict[str, Any]
    ) -> None:
        key = (namespace, name)
        old = self.phases.pop(key, None)
        if old is not None:
            metrics.VMS.labels(phase=old).dec()
        if type_ == "DELETED":
            self.starting.pop(key, None)
            return
        phase = _phase(body)
        self.phases[key] = phase
        metrics.VMS.labels(phase=phase).inc()
        node = (body.get("status") or {}).get("nodeName")
        self._announce(body, kinds.VIRTUALMACHINE.kind, vm_event(old, phase, node))
        if phase in STARTING_PHASES:
            self.starting.setdefault(key, self._clock())
        elif phase == Phase.RUNNING:
            since = self.starting.pop(key, None)
            if since is not None:
                metrics.VM_START_SECONDS.observe(self._clock() - since)
        else:
            self.starting.pop(key, None)

    async def on_migration(
        self, type_: str | None, namespace: str, name: str, body: dict[str, Any]
    ) -> None:
        key = (namespace, name)
        if type_ == "DELETED":
            self.final.discard(key)
            return
        status = body.get("status") or {}
        phase = _phase(body)
        if phase not in migrations.FINAL_PHASES:
            self.final.discard(key)
            return
        if key in self.final:
            return
        self.final.add(key)
        if type_ is None:
            return  # final before this process started: counted by the one before
        metrics.MIGRATIONS.labels(phase=phase).inc()
        if phase != migrations.MigrationPhase.SUCCEEDED:
            return
        if status.get("totalTimeMs") is not None:
            metrics.MIGRATION_SECONDS.observe(status["totalTimeMs"] / 1000)
        if status.get("downtimeMs") is not None:
            metrics.MIGRATION_DOWNTIME_SECONDS.observe(status["downtimeMs"] / 1000)

    async def on_vrf(
        self, type_: str | None, namespace: str, name: str, body: dict[str, Any]
    ) -> None:
        key = (namespace, name)
        old = self.vrf_phases.pop(key, None)
        if type_ == "DELETED":
            return
        phase = _phase(body)
        self.vrf_phases[key] = phase
        ready = (body.get("status") or {}).get("readyNodes")
        self._announce(body, kinds.VRF.kind, vrf_event(old, phase, ready))

    def _announce(self, obj: dict[str, Any], kind: str, event: tuple[str, str, str] | None) -> None:
        if event is not None and self._post is not None:
            type_, reason, message = event
            self._post(obj, kind=kind, type_=type_, reason=reason, message=message)

    def handlers(self) -> list[operating.Handler]:
        return [
            operating.OnEvent(kinds.VRF.plural, self.on_vrf, id="observer-vrfs"),
            operating.OnEvent(
                kinds.VIRTUALMACHINE.plural, self.on_vm, id="observer-virtualmachines"
            ),
            operating.OnEvent(kinds.MIGRATION.plural, self.on_migration, id="observer-migrations"),
        ]
