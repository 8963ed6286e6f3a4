"""VirtualMachine handlers: resolve, decide power state, place, write status once.

kopf delivers watch events; every event (and every change of a template a VM uses)
leads to ``reconcile(namespace, name)``, which re-reads the VM, runs the phases in
``vmphases`` and applies the controller's status fields with server-side apply. It is
level-based: nothing is remembered between calls except which VMs to look at again.

VMs that cannot progress by themselves (not placed, template or clone source missing)
are re-checked every ``RESYNC_SECONDS``: new node Leases and capacity freed by other
VMs are noticed that way, templates immediately through their own watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import kopf

from kubevisor.api import groups, kinds
from kubevisor.api.conditions import ConditionType, Reason
from kubevisor.controller import kube, vmphases, vmstatus
from kubevisor.controller.vmphases import Scope

log = logging.getLogger(__name__)

RESYNC_SECONDS = 5.0
RETRIES = 5
#: Reasons of a False condition that are not a problem worth a Warning.
QUIET_REASONS = frozenset({Reason.AS_EXPECTED, Reason.STOPPED, Reason.SCHEDULED})

Key = tuple[str, str]


class State:
    """Process-wide state: the API client, per-VM locks, who needs another look."""

    api: kube.Kube | None = None
    locks: dict[Key, asyncio.Lock] = {}
    attention: set[Key] = set()
    by_template: dict[Key, set[str]] = {}
    tasks: set[asyncio.Task[None]] = set()


def api() -> kube.Kube:
    if State.api is None:
        raise kopf.TemporaryError("Kubernetes client not connected yet", delay=1)
    return State.api


def _post(obj: dict[str, Any], *, type_: str, reason: str, message: str) -> None:
    """An Event on the VM; outside kopf's context (tests) it is only logged."""
    try:
        body = kopf.Body(obj)  # type: ignore[arg-type]
        kopf.event(body, type=type_, reason=reason, message=message)
    except LookupError:
        log.info("event %s %s: %s", type_, reason, message)


async def _write(scope: Scope) -> None:
    """Apply our status fields if they differ from what the VM shows; post Events for
    conditions that changed into a problem."""
    assert scope.power is not None
    old = scope.status
    wanted = vmstatus.build(
        old,
        generation=scope.generation,
        now=scope.now,
        node=scope.node,
        machine=scope.machine,
        desired=scope.power.desired,
        restart_token=scope.power.restart_token,
        phase=scope.phase if scope.node is None else None,
        conds=scope.conds,
    )
    if not vmstatus.same(old, wanted):
        result = await api().apply_status(
            kinds.VIRTUALMACHINE.plural,
            kinds.VIRTUALMACHINE.kind,
            scope.namespace,
            scope.name,
            wanted,
        )
        scope.obj = result
    for type_, cond in scope.conds.items():
        before = vmstatus.condition(old, type_) or {}
        if (before.get("reason"), before.get("message")) == (cond.reason, cond.message):
            continue
        if cond.status == "False" and cond.reason not in QUIET_REASONS:
            _post(scope.obj, type_="Warning", reason=cond.reason, message=cond.message)
        elif type_ == ConditionType.RESTART_REQUIRED and cond.status == "True":
            _post(scope.obj, type_="Normal", reason="RestartRequired", message=cond.message)
    for reason, message in scope.events:
        _post(scope.obj, type_="Normal", reason=reason, message=message)


async def _ensure_metadata(scope: Scope) -> None:
    """Label ``kubevisor.io/node`` and our finalizer on a placed VM (one patch)."""
    if scope.node is None:
        return
    meta = scope.meta
    labels = dict(meta.get("labels") or {})
    finalizers = list(meta.get("finalizers") or [])
    if labels.get(groups.LABEL_NODE) == scope.node and groups.FINALIZER in finalizers:
        return
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
        {
            "op": "add",
            "path": "/metadata/labels",
            "value": {**labels, groups.LABEL_NODE: scope.node},
        },
    ]
    if groups.FINALIZER not in finalizers:
        ops.append(
            {"op": "add", "path": "/metadata/finalizers", "value": [*finalizers, groups.FINALIZER]}
        )
    await api().json_patch(kinds.VIRTUALMACHINE.plural, scope.namespace, scope.name, ops)


async def _finalize(obj: dict[str, Any]) -> None:
    """Release our finalizer once the agent's is gone (it removes domain, taps, disks)."""
    meta = obj["metadata"]
    finalizers = list(meta.get("finalizers") or [])
    if groups.FINALIZER not in finalizers or vmphases.AGENT_FINALIZER in finalizers:
        return
    remaining = [f for f in finalizers if f != groups.FINALIZER]
    await api().json_patch(
        kinds.VIRTUALMACHINE.plural,
        meta["namespace"],
        meta["name"],
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
            {"op": "replace", "path": "/metadata/finalizers", "value": remaining},
        ],
    )
    log.info("released finalizer of %s/%s", meta["namespace"], meta["name"])


def _track(key: Key, scope: Scope | None) -> None:
    """Remember which VMs need a periodic look and which template each one uses."""
    for tkey, names in list(State.by_template.items()):
        if tkey[0] == key[0]:
            names.discard(key[1])
            if not names:
                del State.by_template[tkey]
    if scope is None:
        State.attention.discard(key)
        return
    if scope.spec is not None and scope.spec.template_ref is not None:
        State.by_template.setdefault((key[0], scope.spec.template_ref.name), set()).add(key[1])
    resolved = scope.conds.get(ConditionType.TEMPLATE_RESOLVED)
    if scope.node is None or (resolved is not None and resolved.status != "True"):
        State.attention.add(key)
    else:
        State.attention.discard(key)


async def reconcile_once(namespace: str, name: str) -> None:
    """One pass over one VM: read, decide, write."""
    client = api()
    obj = await client.get(kinds.VIRTUALMACHINE.plural, namespace, name)
    key = (namespace, name)
    if obj is None:
        _track(key, None)
        State.locks.pop(key, None)
        return
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        _track(key, None)
        await _finalize(obj)
        return
    vmphases.PLACER.observe(obj)
    scope = Scope(obj=obj, now=datetime.now(UTC))
    await vmphases.resolve(scope, client)
    vmphases.power(scope)
    vmphases.record_machine(scope)
    await vmphases.schedule(scope, client, _write)
    await _ensure_metadata(scope)
    _track(key, scope)


async def reconcile(namespace: str, name: str) -> None:
    """``reconcile_once`` serialised per VM, retried on conflicts and API errors."""
    key = (namespace, name)
    lock = State.locks.setdefault(key, asyncio.Lock())
    async with lock:
        for attempt in range(RETRIES):
            try:
                await reconcile_once(namespace, name)
                return
            except Exception as exc:
                if kube.is_gone(exc):
                    return
                if attempt == RETRIES - 1:
                    State.attention.add(key)  # the resync loop tries again later
                    log.exception("reconcile of %s/%s failed", namespace, name)
                    return
                delay = 0.0 if kube.is_conflict(exc) else 0.5 * (attempt + 1)
                log.info("retrying %s/%s after %s", namespace, name, exc)
                await asyncio.sleep(delay)


def _spawn(namespace: str, name: str) -> None:
    task = asyncio.get_running_loop().create_task(reconcile(namespace, name))
    State.tasks.add(task)
    task.add_done_callback(State.tasks.discard)


async def _resync() -> None:
    """Re-check the VMs waiting for something outside them (Leases, capacity)."""
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        for namespace, name in sorted(State.attention):
            _spawn(namespace, name)


@kopf.on.startup()
async def _connect(**_: Any) -> None:
    State.api = await kube.Kube.connect()
    task = asyncio.get_running_loop().create_task(_resync())
    State.tasks.add(task)


@kopf.on.cleanup()
async def _disconnect(**_: Any) -> None:
    for task in list(State.tasks):
        task.cancel()
    for task in list(State.tasks):
        with contextlib.suppress(BaseException):
            await task
    if State.api is not None:
        await State.api.close()
        State.api = None


@kopf.on.event(groups.GROUP, groups.VERSION, kinds.VIRTUALMACHINE.plural)
async def vm_event(type: str, name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
    """Every VM event: update the placement ledger, reconcile that VM (deletions only
    forget it)."""
    assert namespace is not None  # VirtualMachines are namespaced
    raw = dict(body)
    if type == "DELETED":
        vmphases.PLACER.forget(str((raw.get("metadata") or {}).get("uid")))
        _track((namespace, name), None)
        State.locks.pop((namespace, name), None)
        return
    vmphases.PLACER.observe(raw)
    await reconcile(namespace, name)


def template_changed(namespace: str, template: str) -> None:
    """A template appeared, changed or went away: look at the VMs using it now."""
    for name in sorted(State.by_template.get((namespace, template), set())):
        _spawn(namespace, name)
