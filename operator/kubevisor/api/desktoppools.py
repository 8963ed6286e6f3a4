"""DesktopPool: desktop VMs cloned from a template, kept ready for users to claim and
reached from a browser through the display gateway."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from kubevisor.api import appservers, common, conditions, groups

Assignment = Literal["floating", "dedicated"]
LogoffPolicy = Literal["keep", "refresh", "delete"]
PoolMode = Literal["Desktop", "Application"]
#: The mode whose VMs are application servers shared by many sessions.
APPLICATION: Final = "Application"


class DesktopPoolPhase(StrEnum):
    """Lifecycle phase of a pool."""

    PENDING = "Pending"
    SCALING = "Scaling"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


#: Annotation on a desktop VM naming the DesktopClaim bound to it (claim names may be
#: longer than a label value, so an annotation, not ``groups.LABEL_CLAIM``).
ANNOTATION_CLAIM: Final = "kubevisor.io/desktop-claim"
#: Annotation on a desktop VM naming the user it is assigned to (dedicated pools keep it
#: after logoff; floating pools only while bound).
ANNOTATION_USER: Final = "kubevisor.io/desktop-user"
#: Longest pool name: desktop VM names are ``<pool>-<8 hex>`` and must stay DNS labels.
MAX_POOL_NAME: Final = 54

Seconds = Annotated[int, Field(gt=0, le=30 * 86_400)]
UserName = Annotated[str, Field(min_length=1, max_length=253)]


def desktop_name(pool: str, seed: str) -> str:
    """The VM name of a pool's desktop: ``<pool>-<8 hex of seed>`` (pure; the seed is
    the user for a dedicated desktop, so a user's desktop always has the same name)."""
    return f"{pool}-{hashlib.sha256(seed.encode()).hexdigest()[:8]}"


class DesktopPoolSpec(common.Model):
    """Pool size and how desktops are handed out."""

    model_config = ConfigDict(
        json_schema_extra=common.cel(
            common.rule(
                "!has(self.min) || self.min <= self.max",
                "min must not exceed max",
                field_path=".min",
            ),
            common.rule(
                "!has(self.spare) || self.spare <= self.max",
                "spare must not exceed max",
                field_path=".spare",
            ),
            common.rule(
                "(has(self.mode) && self.mode == 'Application') == has(self.application)",
                "application is required exactly when mode is Application",
                field_path=".application",
            ),
            common.rule(
                "!has(oldSelf.mode) || (has(self.mode) && self.mode == oldSelf.mode)",
                "mode cannot change; create another pool",
                field_path=".mode",
            ),
        )
    )

    mode: PoolMode = "Desktop"
    """Desktop: each claim gets a whole desktop VM. Application: the VMs are application
    servers; each claim gets its own session running ``application`` on the least-loaded
    one, and the browser shows only that application's window."""
    application: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    """Application mode: the command run (through ssh with X11 forwarding) on a server
    for each session, e.g. ``xterm``."""

    template_ref: common.LocalObjectReference
    """VMTemplate the desktops are cloned from (linked clones)."""
    min: Annotated[int, Field(ge=0, le=10_000)] = 0
    """Desktops kept in existence even when nobody uses them."""
    max: Annotated[int, Field(ge=1, le=10_000)]
    """Upper bound on desktops in the pool."""
    spare: Annotated[int, Field(ge=0, le=10_000)] = 1
    """Unclaimed running desktops kept ready so a claim binds at once."""
    assignment: Assignment = "floating"
    """floating: any free desktop, returned at logoff; dedicated: a user keeps theirs."""
    logoff_policy: LogoffPolicy = "refresh"
    """At release: keep the desktop as is, refresh it from the template, or delete it."""
    idle_timeout_seconds: Seconds | None = None
    """Log the session off after this long without keyboard or mouse input (as the
    display gateway reports it in the claim's status.session)."""
    disconnected_timeout_seconds: Seconds | None = None
    """Log the session off after this long with no viewer connected (counted from the
    binding when nobody ever connected)."""
    max_session_seconds: Seconds | None = None
    """Log the session off this long after the claim was bound, whatever happens."""
    per_user_limit: Annotated[int, Field(ge=1, le=10_000)] | None = None
    """Most desktops one user may hold in this pool at once; further claims wait."""
    allowed_users: list[UserName] = Field(default_factory=list, max_length=1_000)
    """Users who may claim (with allowedGroups: either admits); both empty: everyone."""
    allowed_groups: list[UserName] = Field(default_factory=list, max_length=1_000)
    """Groups whose members may claim (a claim's spec.groups)."""
    token_ttl_seconds: Annotated[int, Field(ge=30, le=86_400)] = 300
    """How long a browser URL minted into a claim admits a new connection; the
    controller mints a fresh one before it expires."""

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min > self.max:
            raise ValueError("min must not exceed max")
        if self.spare > self.max:
            raise ValueError("spare must not exceed max")
        if (self.mode == APPLICATION) != (self.application is not None):
            raise ValueError("application is required exactly when mode is Application")
        return self


class PoolDesktop(common.Model):
    """One desktop VM of the pool."""

    name: common.ShortString
    """VirtualMachine name."""
    phase: Annotated[str, Field(max_length=32)] | None = None
    """The VM's phase."""
    claim: common.ShortString | None = None
    """DesktopClaim bound to it, if any."""
    user: common.ShortString | None = None
    """User it is assigned to (dedicated pools keep this after release)."""
    node_name: common.ShortString | None = None
    """Node the desktop runs on."""
    reason: Annotated[str, Field(max_length=128)] | None = None
    """Why the desktop is not running yet (its VM's Ready/Scheduled condition reason)."""
    sessions: Annotated[int, Field(ge=0)] | None = None
    """Application mode: the sessions (claims) placed on this server."""


class DesktopPoolStatus(conditions.Status):
    """Observed state of a pool."""

    phase: DesktopPoolPhase | None = None
    """Lifecycle phase."""
    ready: Annotated[int, Field(ge=0)] | None = None
    """Desktops running and usable."""
    claimed: Annotated[int, Field(ge=0)] | None = None
    """Desktops bound to a claim."""
    spare: Annotated[int, Field(ge=0)] | None = None
    """Ready desktops not bound to a claim."""
    desktops: list[PoolDesktop] = Field(default_factory=list, max_length=10_000)
    """The pool's desktops."""
    total: Annotated[int, Field(ge=0)] | None = None
    """Desktops that exist (any phase)."""
    waiting: Annotated[int, Field(ge=0)] | None = None
    """Claims waiting for a desktop."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """metadata.generation this status was computed from."""


class DesktopPool(common.Resource):
    """A pool of desktop VMs handed to users through DesktopClaims."""

    kind: Literal["DesktopPool"] = "DesktopPool"
    """Always DesktopPool."""
    spec: DesktopPoolSpec
    """Pool size and hand-out policy."""
    status: DesktopPoolStatus | None = None
    """Observed state."""


#: Where an Application pool's server VMs name the Secret with the keys their sshd
#: authorizes (the VM's ``spec.access.sshKeySecret``).
ACCESS_FIELD: Final = "access"
SSH_KEY_SECRET_FIELD: Final = "sshKeySecret"

#: The VM phase in which a desktop is usable.
READY_PHASE: Final = "Running"


@dataclass(frozen=True)
class Desktop:
    """One desktop VM of a pool as both desktop reconcilers read it (pure view)."""

    name: str
    phase: str | None = None
    claim: str | None = None
    """The DesktopClaim bound to it (annotation :data:`ANNOTATION_CLAIM`)."""
    user: str | None = None
    """The user it is assigned to (annotation :data:`ANNOTATION_USER`)."""
    node: str | None = None
    deleting: bool = False
    created: str = ""
    """creationTimestamp as written (RFC 3339 sorts as text)."""
    resource_version: str = ""
    reason: str | None = None
    """Why it is not running: the reason and message of its first False condition."""
    sessions: int = 0
    """Application mode: claims placed on this server (their ``status.vmName``)."""
    guest_ready: bool = False
    """Its GuestReady condition is True: the guest said it serves (``api/guestready``;
    an application server's sshd listens)."""

    @property
    def ready(self) -> bool:
        """Running and not being deleted."""
        return self.phase == READY_PHASE and not self.deleting

    @property
    def serving(self) -> bool:
        """Application mode: ready and its guest ready, so a session's ssh connects at
        its first try (a server that merely runs is still booting its sshd)."""
        return self.ready and self.guest_ready


def _why_not_running(status: Mapping[str, Any]) -> str | None:
    if status.get("phase") == READY_PHASE:
        return None
    for cond in status.get("conditions") or []:
        if cond.get("status") == "False" and cond.get("type") in ("Scheduled", "Ready"):
            reason, message = cond.get("reason") or "", cond.get("message") or ""
            return f"{reason}: {message}"[:128] if message else str(reason)[:128]
    return None


def desktop(vm: Mapping[str, Any]) -> Desktop:
    """The desktop view of a VirtualMachine object (raw wire form)."""
    meta = vm.get("metadata") or {}
    status = vm.get("status") or {}
    annotations = meta.get("annotations") or {}
    return Desktop(
        name=str(meta.get("name")),
        phase=status.get("phase"),
        claim=annotations.get(ANNOTATION_CLAIM) or None,
        user=annotations.get(ANNOTATION_USER) or None,
        node=status.get("nodeName"),
        deleting=bool(meta.get("deletionTimestamp")),
        created=str(meta.get("creationTimestamp") or ""),
        resource_version=str(meta.get("resourceVersion") or ""),
        reason=_why_not_running(status),
        guest_ready=conditions.is_true(
            status.get("conditions") or [], conditions.ConditionType.GUEST_READY
        ),
    )


def desktops_of(vms: Iterable[Mapping[str, Any]], pool: str) -> list[Desktop]:
    """The desktops of ``pool`` among ``vms`` (by the :data:`groups.LABEL_POOL` label),
    sorted by name."""
    out = [
        desktop(vm)
        for vm in vms
        if ((vm.get("metadata") or {}).get("labels") or {}).get(groups.LABEL_POOL) == pool
    ]
    return sorted(out, key=lambda d: d.name)


def desktop_body(
    pool: Mapping[str, Any],
    name: str,
    *,
    user: str | None = None,
    claim: str | None = None,
) -> dict[str, Any]:
    """The VirtualMachine a pool's desktop is: a linked clone of the pool's template
    (the template's disks are ``clone: linked`` overlays unless it says otherwise),
    always running, labelled with the pool and owned by it (garbage-collected with it).
    An Application pool's servers also reference the pool's public-key Secret
    (``appservers.pool_key_secret``), so the gateway can log in to run sessions."""
    meta = pool.get("metadata") or {}
    spec = pool.get("spec") or {}
    template = (spec.get("templateRef") or {}).get("name")
    annotations = {
        k: v for k, v in ((ANNOTATION_USER, user), (ANNOTATION_CLAIM, claim)) if v is not None
    }
    body: dict[str, Any] = {
        "apiVersion": groups.API_VERSION,
        "kind": "VirtualMachine",
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace"),
            "labels": {groups.LABEL_POOL: meta.get("name")},
            "ownerReferences": [
                {
                    "apiVersion": groups.API_VERSION,
                    "kind": "DesktopPool",
                    "name": meta.get("name"),
                    "uid": meta.get("uid"),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {"templateRef": {"name": template}, "runStrategy": "Always"},
    }
    if annotations:
        body["metadata"]["annotations"] = annotations
    if spec.get("mode") == APPLICATION:
        secret = appservers.pool_key_secret(str(meta.get("name")))
        body["spec"][ACCESS_FIELD] = {SSH_KEY_SECRET_FIELD: secret}
    return body
