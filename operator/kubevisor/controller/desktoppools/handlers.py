"""DesktopPool handlers: one pass per pool binds its claims and sizes its desktops.

Pool events, events of the pool's VMs (label ``groups.LABEL_POOL``) and claim events
(through ``wake``, wired in ``registry``) ask for a pass over (namespace, pool). The
pass re-reads the pool, its VMs and the claims naming it, lets the claims side
(``settle``, from ``controller/desktopclaims``) bind and release, re-reads the VMs,
then creates or removes desktops by ``sizing.plan`` and applies the pool's status.
One key per pool: a pool's claims and its scale-in never race each other; deletes and
reservations also carry a resourceVersion precondition.

Pools with claims (sessions to time out, tokens to renew) or not converged are looked
at again every ``RESYNC_SECONDS``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pydantic

from kubevisor.api import desktoppools, displaytokens, groups, kinds
from kubevisor.api.conditions import Reason
from kubevisor.api.desktoppools import DesktopPoolSpec
from kubevisor.controller.desktoppools import appkeys, sizing, status
from kubevisor.controller.kube import operating
from kubevisor.controller.runtime import running
from kubevisor.controller.runtime.reconciling import Key, Outcome

log = logging.getLogger(__name__)

POOL = kinds.DESKTOPPOOL
VM = kinds.VIRTUALMACHINE
CLAIM = kinds.DESKTOPCLAIM
TEMPLATE = kinds.VMTEMPLATE
RESYNC_SECONDS = 5.0

Obj = dict[str, Any]
Settle = Callable[[str, str, Obj | None, list[Obj], list[Obj]], Awaitable[int]]
"""(namespace, pool, pool object or None, its VMs, its claims) -> claims waiting."""


async def _no_claims(ns: str, pool: str, obj: Obj | None, vms: list[Obj], c: list[Obj]) -> int:
    return 0


class Pools:
    """The DesktopPool reconciler of one controller process."""

    def __init__(
        self,
        rt: running.Runtime,
        *,
        settle: Settle = _no_claims,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._rt = rt
        self._key_namespace = displaytokens.key_namespace(environ)
        self._settle = settle
        self._reconciler = rt.reconciler(
            POOL.kind, self.reconcile_once, resync_seconds=RESYNC_SECONDS
        )

    def handlers(self) -> list[operating.Handler]:
        return [
            operating.OnEvent(POOL.plural, self.on_event),
            operating.OnEvent(VM.plural, self.on_vm_event, id="desktoppools-virtualmachines"),
        ]

    async def on_event(self, type: str | None, namespace: str, name: str, body: Obj) -> None:
        await self._reconciler.reconcile((namespace, name))

    async def on_vm_event(self, type: str | None, namespace: str, name: str, body: Obj) -> None:
        pool = ((body.get("metadata") or {}).get("labels") or {}).get(groups.LABEL_POOL)
        if pool:
            self._reconciler.spawn((namespace, str(pool)))

    def wake(self, namespace: str, pool: str) -> None:
        """A pass over (namespace, pool) in the background (claim events)."""
        self._reconciler.spawn((namespace, pool))

    @staticmethod
    def _desktops(
        vms: list[Obj], pool: str, claims: list[Obj] | None
    ) -> list[desktoppools.Desktop]:
        """The pool's VMs; with ``claims`` (Application mode), each with the sessions
        placed on it (claims naming it in status.vmName, not over)."""
        desktops = desktoppools.desktops_of(vms, pool)
        if claims is None:
            return desktops
        load: Counter[str] = Counter(
            str((c.get("status") or {}).get("vmName"))
            for c in claims
            if (c.get("status") or {}).get("vmName")
            and not (c.get("metadata") or {}).get("deletionTimestamp")
            and (c.get("status") or {}).get("phase") != "Released"
        )
        return [dataclasses.replace(d, sessions=load[d.name]) for d in desktops]

    def _post(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        self._rt.events.post(obj, kind=POOL.kind, type_=type_, reason=reason, message=message)

    async def _vms(self, namespace: str, pool: str) -> list[Obj]:
        return await self._rt.client.list_namespaced(
            VM.plural, namespace, label_selector=f"{groups.LABEL_POOL}={pool}"
        )

    async def reconcile_once(self, key: Key) -> Outcome:
        namespace, name = key
        client = self._rt.client
        obj = await client.get(POOL.plural, namespace, name)
        claims = [
            c
            for c in await client.list_namespaced(CLAIM.plural, namespace)
            if ((c.get("spec") or {}).get("poolRef") or {}).get("name") == name
        ]
        vms = await self._vms(namespace, name)
        deleting = obj is not None and bool(obj["metadata"].get("deletionTimestamp"))
        waiting = await self._settle(namespace, name, None if deleting else obj, vms, claims)
        if obj is None or deleting:
            return Outcome.WAIT if claims else Outcome.GONE
        try:
            spec = DesktopPoolSpec.model_validate(obj.get("spec") or {})
        except pydantic.ValidationError as exc:
            log.warning("DesktopPool %s/%s unreadable: %s", namespace, name, exc)
            return Outcome.WAIT
        vms = await self._vms(namespace, name)
        application = spec.mode == desktoppools.APPLICATION
        if application:
            claims = [
                c
                for c in await client.list_namespaced(CLAIM.plural, namespace)
                if ((c.get("spec") or {}).get("poolRef") or {}).get("name") == name
            ]
        desktops = self._desktops(vms, name, claims if application else None)
        plan = sizing.plan(spec, desktops, waiting=waiting)
        now = datetime.now(UTC)
        problem: tuple[str, str] | None = None
        if len(name) > desktoppools.MAX_POOL_NAME:
            problem = (
                Reason.INVALID_SPEC,
                f"the pool's name has {len(name)} characters; desktop names need it to have "
                f"at most {desktoppools.MAX_POOL_NAME}",
            )
        elif await client.get(TEMPLATE.plural, namespace, spec.template_ref.name) is None:
            problem = (
                Reason.TEMPLATE_NOT_FOUND,
                f"VMTemplate {spec.template_ref.name} does not exist; no desktops are created",
            )
        if problem is None and application:
            try:
                await appkeys.ensure(self._rt, self._key_namespace, obj)
            except ValueError as exc:
                problem = (Reason.INVALID_SPEC, str(exc))
        if problem is None:
            await self._act(obj, plan, desktops)
            if plan.create or plan.remove:
                vms = await self._vms(namespace, name)
                desktops = self._desktops(vms, name, claims if application else None)
        wanted = status.build(
            obj.get("status") or {},
            spec,
            desktops,
            plan,
            waiting=waiting,
            generation=obj["metadata"].get("generation"),
            now=now,
            problem=problem,
        )
        current = obj.get("status") or {}
        if not status.same(current, wanted):
            obj = await client.apply_status(POOL.plural, POOL.kind, namespace, name, wanted)
            self._event(obj, current, wanted)
        converged = wanted["phase"] == "Ready" and not plan.create and not plan.remove
        return Outcome.DONE if converged and not claims else Outcome.WAIT

    async def _act(self, obj: Obj, plan: sizing.Plan, desktops: list[desktoppools.Desktop]) -> None:
        client = self._rt.client
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        for _ in range(plan.create):
            desktop = desktoppools.desktop_name(name, secrets.token_hex(8))
            await client.create(VM.plural, ns, desktoppools.desktop_body(obj, desktop))
        if plan.create:
            self._post(obj, "Normal", "ScalingOut", f"creating {plan.create} desktop(s)")
        by_name = {d.name: d for d in desktops}
        for victim in plan.remove:
            # only the version decided on: a desktop bound meanwhile fails the precondition
            await client.delete(
                VM.plural, ns, victim, resource_version=by_name[victim].resource_version
            )
        if plan.remove:
            self._post(
                obj, "Normal", "ScalingIn", f"removing idle desktop(s) {', '.join(plan.remove)}"
            )

    def _event(self, obj: Obj, current: Obj, wanted: Obj) -> None:
        was: Obj = next(
            (c for c in current.get("conditions") or [] if c.get("type") == "Ready"), {}
        )
        now = wanted["conditions"][0]
        if was.get("reason") == now.get("reason") and was.get("status") == now.get("status"):
            return
        if now.get("status") == "True":
            self._post(obj, "Normal", "PoolReady", now.get("message", ""))
        elif now.get("reason") in status.DEGRADING:
            self._post(obj, "Warning", str(now.get("reason")), now.get("message", ""))
