"""DesktopClaim handlers: every claim event wakes its pool's pass; the pool's pass calls
:meth:`Claims.settle`, which binds, releases and writes the claims of that one pool.

Claims of one pool compete for the same desktops, so they are decided together in the
pool's pass (one key per pool, serialised by the pool's reconciler; see
``registry``). A pass:

1. puts the finalizer on claims that lack it (so a deleted claim's desktop is released
   by the pool's ``logoffPolicy`` before the claim goes),
2. decides with ``binding.decide``,
3. releases desktops (keep: drops the claim annotation; refresh/delete: deletes the VM
   and with it its disk, so the next user gets a fresh clone), reserves free desktops
   (annotations, with a resourceVersion test so a concurrent scale-in or another pass
   cannot hand the same desktop out twice) and creates dedicated desktops,
4. mints the URLs of bound claims with the key from the Secret
   ``displaytokens.KEY_SECRET_NAME`` (created when missing) and applies each claim's
   status, then removes the finalizer of deleted claims that hold nothing.

Configuration (controller environment): :data:`ENV_GATEWAY_URL` (the display gateway's
base URL the claim URLs point at) and ``displaytokens.ENV_KEY_NAMESPACE``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import pydantic

from kubevisor.api import desktoppools, displaytokens, groups, kinds
from kubevisor.api.desktopclaims import BOUND, ClaimReason, DesktopClaim, DesktopClaimPhase
from kubevisor.api.desktoppools import DesktopPoolSpec
from kubevisor.controller.desktopclaims import binding, placing, status, tokens
from kubevisor.controller.desktopclaims.binding import ClaimDecision, State
from kubevisor.controller.kube import operating
from kubevisor.controller.runtime import running

log = logging.getLogger(__name__)

CLAIM = kinds.DESKTOPCLAIM
VM = kinds.VIRTUALMACHINE
#: The display gateway's base URL (``https://desktops.example.com``) claim URLs point at.
ENV_GATEWAY_URL: Final = "KUBEVISOR_GATEWAY_URL"
DEFAULT_GATEWAY_URL: Final = "http://127.0.0.1:6080"
#: Reasons of a not-bound claim that are an ordinary wait (Normal Events, not Warnings).
QUIET = frozenset({ClaimReason.WAITING_FOR_DESKTOP, ClaimReason.BOUND})

Obj = dict[str, Any]


def pool_of(claim: Mapping[str, Any]) -> str | None:
    """The pool a claim names (raw wire form), if it names one."""
    ref = (claim.get("spec") or {}).get("poolRef") or {}
    name = ref.get("name")
    return str(name) if name else None


def _view(obj: Mapping[str, Any]) -> binding.Claim | None:
    try:
        claim = DesktopClaim.model_validate(obj)
    except pydantic.ValidationError:
        return None
    st = claim.status
    ended: tuple[ClaimReason, str] | None = None
    if st is not None and st.phase is DesktopClaimPhase.RELEASED:
        cond = next((c for c in st.conditions if c.type == BOUND), None)
        with contextlib.suppress(ValueError):
            if cond is not None:
                ended = (ClaimReason(cond.reason), cond.message)
    return binding.Claim(
        name=str(claim.metadata.name),
        user=claim.spec.user,
        groups=tuple(claim.spec.groups),
        created=str((obj.get("metadata") or {}).get("creationTimestamp") or ""),
        deleting=claim.metadata.deletion_timestamp is not None,
        phase=st.phase if st else None,
        bound_at=st.bound_at if st else None,
        session=st.session if st else None,
        ended=ended,
        vm_name=st.vm_name if st else None,
    )


class Claims:
    """The DesktopClaim side of one controller process."""

    def __init__(self, rt: running.Runtime, *, environ: Mapping[str, str] = os.environ) -> None:
        self._rt = rt
        self.gateway = environ.get(ENV_GATEWAY_URL) or DEFAULT_GATEWAY_URL
        self.key_namespace = displaytokens.key_namespace(environ)
        self._key: bytes | None = None
        self.wake: Callable[[str, str], None] = lambda namespace, pool: None
        """Asks for a pass over (namespace, pool); the registry wires it to the pools."""

    def handlers(self) -> list[operating.Handler]:
        return [operating.OnEvent(CLAIM.plural, self.on_event)]

    async def on_event(self, type: str | None, namespace: str, name: str, body: Obj) -> None:
        pool = pool_of(body)
        if pool is not None:
            self.wake(namespace, pool)

    def _post(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        self._rt.events.post(obj, kind=CLAIM.kind, type_=type_, reason=reason, message=message)

    async def key(self) -> bytes:
        """The signing key: read from its Secret, created (32 random bytes) if missing."""
        if self._key is not None:
            return self._key
        client = self._rt.client
        ns = self.key_namespace
        data = await client.secret_data(ns, displaytokens.KEY_SECRET_NAME)
        if data is None:
            body = displaytokens.key_secret_body(secrets.token_bytes(displaytokens.MIN_KEY_BYTES))
            await client.create_secret(ns, body)
            data = await client.secret_data(ns, displaytokens.KEY_SECRET_NAME)
        self._key = displaytokens.key_from_secret_data(data or {})
        return self._key

    async def settle(
        self, namespace: str, pool: str, pool_obj: Obj | None, vms: list[Obj], claims: list[Obj]
    ) -> int:
        """Bind, release and write the claims of one pool (see module docstring);
        returns how many claims wait for a desktop the pool should create."""
        client = self._rt.client
        spec: DesktopPoolSpec | None = None
        if pool_obj is not None:
            try:
                spec = DesktopPoolSpec.model_validate(pool_obj.get("spec") or {})
            except pydantic.ValidationError:
                spec = None
        by_name: dict[str, Obj] = {}
        views: list[binding.Claim] = []
        for obj in claims:
            view = _view(obj)
            if view is None:
                continue
            meta = obj["metadata"]
            if not view.deleting and groups.FINALIZER not in (meta.get("finalizers") or []):
                obj = await self._add_finalizer(obj)
            by_name[view.name] = obj
            views.append(view)
        vm_by_name = {str(v["metadata"]["name"]): v for v in vms}
        desktops = desktoppools.desktops_of(vms, pool)
        now = datetime.now(UTC)
        if spec is not None and spec.mode == desktoppools.APPLICATION:
            d = placing.decide(spec, pool, desktops, views, now=now)
        else:
            d = binding.decide(spec, pool, desktops, views, now=now)
        for release in d.releases:
            await self._release(namespace, vm_by_name[release.desktop], release)
        for cd in d.claims:
            obj = by_name[cd.claim]
            user = str(obj["spec"]["user"])
            if cd.reserve is not None:
                await self._reserve(vm_by_name[cd.reserve], cd.claim, user)
            if cd.create is not None and pool_obj is not None:
                body = desktoppools.desktop_body(pool_obj, cd.create, user=user, claim=cd.claim)
                await client.create(VM.plural, namespace, body)
        for cd in d.claims:
            await self._write(by_name[cd.claim], cd, spec, now=now)
        return d.waiting

    async def _add_finalizer(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        finalizers = [*(meta.get("finalizers") or []), groups.FINALIZER]
        return await self._rt.client.json_patch(
            CLAIM.plural,
            meta["namespace"],
            meta["name"],
            [
                {
                    "op": "test",
                    "path": "/metadata/resourceVersion",
                    "value": meta["resourceVersion"],
                },
                {"op": "add", "path": "/metadata/finalizers", "value": finalizers},
            ],
        )

    async def _annotate(self, vm: Obj, annotations: dict[str, str]) -> None:
        meta = vm["metadata"]
        await self._rt.client.json_patch(
            VM.plural,
            meta["namespace"],
            meta["name"],
            [
                {
                    "op": "test",
                    "path": "/metadata/resourceVersion",
                    "value": meta["resourceVersion"],
                },
                {"op": "add", "path": "/metadata/annotations", "value": annotations},
            ],
        )

    async def _reserve(self, vm: Obj, claim: str, user: str) -> None:
        annotations = dict(vm["metadata"].get("annotations") or {})
        annotations[desktoppools.ANNOTATION_CLAIM] = claim
        annotations[desktoppools.ANNOTATION_USER] = user
        await self._annotate(vm, annotations)

    async def _release(self, namespace: str, vm: Obj, release: binding.Release) -> None:
        meta = vm["metadata"]
        if release.policy == "keep":
            annotations = dict(meta.get("annotations") or {})
            annotations.pop(desktoppools.ANNOTATION_CLAIM, None)
            if not release.dedicated:
                annotations.pop(desktoppools.ANNOTATION_USER, None)
            await self._annotate(vm, annotations)
            return
        # refresh and delete: the VM goes, and its disk with it (the agent's finalizer
        # removes the files); the pool's sizing brings a fresh clone where one is needed
        await self._rt.client.delete(
            VM.plural, namespace, meta["name"], resource_version=meta["resourceVersion"]
        )

    async def _write(
        self, obj: Obj, cd: ClaimDecision, spec: DesktopPoolSpec | None, *, now: datetime
    ) -> None:
        client = self._rt.client
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if cd.state is State.FINALIZE:
            remaining = [f for f in meta.get("finalizers") or [] if f != groups.FINALIZER]
            if remaining != list(meta.get("finalizers") or []):
                await client.json_patch(
                    CLAIM.plural,
                    ns,
                    name,
                    [
                        {
                            "op": "test",
                            "path": "/metadata/resourceVersion",
                            "value": meta["resourceVersion"],
                        },
                        {"op": "replace", "path": "/metadata/finalizers", "value": remaining},
                    ],
                )
            return
        current = obj.get("status") or {}
        minted: tokens.Minted | None = None
        if cd.state is State.BOUND and cd.desktop is not None:
            shadowing = bool((obj.get("spec") or {}).get("allowShadowing"))
            ttl = spec.token_ttl_seconds if spec is not None else displaytokens.DEFAULT_TTL_SECONDS
            if tokens.needs_mint(
                status.shown(current), vm=cd.desktop, shadowing=shadowing, ttl=ttl, now=now
            ):
                try:
                    key = await self.key()
                except ValueError as exc:
                    cd = ClaimDecision(
                        cd.claim, State.STARTING, ClaimReason.KEY_UNAVAILABLE, str(exc), cd.desktop
                    )
                else:
                    minted = tokens.mint(
                        key,
                        gateway=self.gateway,
                        namespace=ns,
                        claim=name,
                        uid=str(meta.get("uid")),
                        shadowing=shadowing,
                        ttl=ttl,
                        now=now,
                        nonces=(secrets.token_urlsafe(12), secrets.token_urlsafe(12)),
                    )
        wanted = status.build(
            current, cd, generation=meta.get("generation"), now=now, minted=minted
        )
        if status.same(current, wanted):
            return
        obj = await client.apply_status(CLAIM.plural, CLAIM.kind, ns, name, wanted)
        self._event(obj, current, cd)

    def _event(self, obj: Obj, current: Mapping[str, Any], cd: ClaimDecision) -> None:
        was = next((c for c in current.get("conditions") or [] if c.get("type") == "Bound"), None)
        if was is not None and was.get("reason") == cd.reason and was.get("message") == cd.message:
            return
        if cd.state is State.BOUND:
            self._post(obj, "Normal", "Bound", cd.message)
        elif cd.state is State.RELEASED:
            self._post(obj, "Normal", "LoggedOff", f"{cd.reason}: {cd.message}")
        elif cd.reason in QUIET:
            self._post(obj, "Normal", cd.reason, cd.message)
        else:
            self._post(obj, "Warning", cd.reason, cd.message)
