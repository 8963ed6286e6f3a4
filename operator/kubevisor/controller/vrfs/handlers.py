"""VRF handlers: refuse cluster-level conflicts, allocate tables, summarise the nodes.

kopf delivers VRF watch events; each one only marks the VRF set dirty. One worker task
then re-reads every VRF and every node Lease and decides all VRFs at once
(``vrfsplanning.decide``): conflicts and table allocation depend on the other VRFs, so
deciding one object at a time would be order-dependent. The worker also runs every
``RESYNC_SECONDS``, which is how new or lost nodes change ``readyNodes``.

Status: the controller applies ``phase``, ``readyNodes``, ``tableAllocated``,
``observedGeneration`` and conditions Ready/Scheduled with server-side apply (field
manager kubevisor-controller). Agents merge-patch only ``status.nodes.<their node>``, a
field the controller never lists, so neither side clobbers the other. No finalizer: the
agents are level-based and remove a deleted VRF on their next pass (also after a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes_asyncio import client

from kubevisor.api import conditions, groups, kinds
from kubevisor.api.conditions import ConditionType, Reason
from kubevisor.controller import vrfsplanning
from kubevisor.controller.kube import client as kube
from kubevisor.controller.placement import placing

log = logging.getLogger(__name__)

PLURAL = kinds.VRF.plural
KIND = kinds.VRF.kind
RESYNC_SECONDS = 5.0
#: Reasons of Ready=False that are a normal wait, not worth a Warning Event.
QUIET_REASONS = frozenset({Reason.IN_PROGRESS, Reason.AS_EXPECTED})

Key = tuple[str, str]


class State:
    """Process-wide: the API clients, the VRFs this controller serves, the wake-up."""

    api: kube.Kube | None = None
    events: client.ApiClient | None = None
    known: set[Key] = set()
    dirty: asyncio.Event | None = None
    task: asyncio.Task[None] | None = None
    passes: int = 0


async def post_event(obj: dict[str, Any], *, type_: str, reason: str, message: str) -> None:
    """A core/v1 Event on the VRF, written directly (our worker runs outside kopf's
    per-object context, where ``kopf.event`` has no queue)."""
    if State.events is None:
        log.info("event %s %s: %s", type_, reason, message)
        return
    meta = obj["metadata"]
    now = datetime.now(UTC)
    body = {
        "metadata": {
            "name": f"{meta['name']}.{uuid.uuid4().hex[:12]}",
            "namespace": meta["namespace"],
        },
        "involvedObject": {
            "apiVersion": groups.API_VERSION,
            "kind": KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": kube.FIELD_MANAGER},
        "reportingComponent": kube.FIELD_MANAGER,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        events: Any = client.CoreV1Api(State.events)
        await events.create_namespaced_event(meta["namespace"], body)
    except client.ApiException as exc:
        log.warning("could not post event %s on %s: %s", reason, meta["name"], exc)


async def reconcile_all() -> None:
    """One pass: read every VRF and Lease, decide, apply the statuses that changed."""
    api = State.api
    if api is None:
        return
    objs = await api.list_all(PLURAL)
    leases = await api.list_leases(
        placing.LEASE_NAMESPACE, label_selector=f"{placing.LABEL_AGENT}=true"
    )
    now = datetime.now(UTC)
    nodes = [placing.node_from_lease(lease, now=now) for lease in leases]
    live = [o for o in objs if not (o.get("metadata") or {}).get("deletionTimestamp")]
    items = {vrfsplanning.item_from(o).key: (o, vrfsplanning.item_from(o)) for o in live}
    decisions = vrfsplanning.decide([i for _, i in items.values()], nodes)
    for key, (obj, item) in sorted(items.items()):
        if key not in State.known:
            continue  # another controller's namespace
        wanted = vrfsplanning.build_status(item, decisions[key], now=now)
        if vrfsplanning.same(item.status, wanted):
            continue
        try:
            await api.apply_status(PLURAL, KIND, item.namespace, item.name, wanted)
        except Exception as exc:
            if kube.is_gone(exc):
                continue
            raise
        before = conditions.get_condition(
            list(item.status.get("conditions") or []), ConditionType.READY
        )
        after = conditions.get_condition(wanted["conditions"], ConditionType.READY) or {}
        changed = (before or {}).get("reason") != after.get("reason")
        if changed and after.get("status") == "False" and after.get("reason") not in QUIET_REASONS:
            await post_event(
                obj, type_="Warning", reason=str(after["reason"]), message=str(after["message"])
            )
    State.passes += 1


async def _worker() -> None:
    """Run `reconcile_all` when something changed, or every RESYNC_SECONDS."""
    assert State.dirty is not None
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(State.dirty.wait(), timeout=RESYNC_SECONDS)
        State.dirty.clear()
        try:
            await reconcile_all()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("VRF pass failed; retrying")
            await asyncio.sleep(1.0)
            State.dirty.set()


@kopf.on.startup()
async def _connect(**_: Any) -> None:
    State.api = await kube.Kube.connect()
    State.events = client.ApiClient()
    State.dirty = asyncio.Event()
    State.task = asyncio.get_running_loop().create_task(_worker())


@kopf.on.cleanup()
async def _disconnect(**_: Any) -> None:
    if State.task is not None:
        State.task.cancel()
        with contextlib.suppress(BaseException):
            await State.task
        State.task = None
    if State.events is not None:
        await State.events.close()
        State.events = None
    if State.api is not None:
        await State.api.close()
        State.api = None


@kopf.on.event(groups.GROUP, groups.VERSION, PLURAL)
async def vrf_event(type: str, name: str, namespace: str | None, **_: Any) -> None:
    """Every VRF event (agents' node entries included) wakes the worker."""
    assert namespace is not None  # VRFs are namespaced
    if type == "DELETED":
        State.known.discard((namespace, name))
    else:
        State.known.add((namespace, name))
    if State.dirty is not None:
        State.dirty.set()
