"""DesktopClaim: one user's request for a desktop from a pool; status carries the
browser URL once bound."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import ConfigDict, Field

from kubevisor.api import common, conditions


class DesktopClaimPhase(StrEnum):
    """Lifecycle phase of a claim."""

    PENDING = "Pending"
    BOUND = "Bound"
    RELEASED = "Released"
    FAILED = "Failed"


class DesktopClaimSpec(common.Model):
    """Which pool and for whom."""

    model_config = ConfigDict(
        json_schema_extra=common.cel(
            common.rule(
                "self.user == oldSelf.user && self.poolRef == oldSelf.poolRef",
                "spec.user and spec.poolRef cannot change; delete the claim and create another",
            )
        )
    )

    pool_ref: common.LocalObjectReference
    """DesktopPool to take a desktop from."""
    user: Annotated[str, Field(min_length=1, max_length=253)]
    """User the desktop is for (dedicated pools give the same user the same desktop)."""
    groups: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list, max_length=100
    )
    """Groups the user belongs to (matched against the pool's allowedGroups)."""
    allow_shadowing: bool = False
    """Also mint a view-only URL (status.viewUrl) for a second viewer who cannot type
    (help-desk shadowing)."""


#: Field manager of status.session (the display gateway's only write).
GATEWAY_FIELD_MANAGER: Final = "kubevisor-gateway"
#: Condition type saying whether (and why not) the claim holds a desktop.
BOUND: Final = "Bound"


class ClaimReason(StrEnum):
    """Reasons of a claim's Bound and Ready conditions."""

    BOUND = "Bound"
    """Holds a running desktop; status.url opens it."""
    POOL_NOT_FOUND = "PoolNotFound"
    """spec.poolRef names no DesktopPool."""
    POOL_EXHAUSTED = "PoolExhausted"
    """Every desktop the pool may have (spec.max) is in use; the claim waits."""
    WAITING_FOR_DESKTOP = "WaitingForDesktop"
    """A desktop is being created or started for the claim."""
    NOT_ALLOWED = "NotAllowed"
    """The user is not in the pool's allowedUsers nor any of its allowedGroups."""
    USER_LIMIT_REACHED = "UserLimitReached"
    """The user already holds the pool's perUserLimit desktops; the claim waits."""
    KEY_UNAVAILABLE = "KeyUnavailable"
    """The display signing key could not be read or created."""
    IDLE_TIMEOUT = "IdleTimeout"
    """Logged off: no input for the pool's idleTimeoutSeconds."""
    DISCONNECTED_TIMEOUT = "DisconnectedTimeout"
    """Logged off: no viewer for the pool's disconnectedTimeoutSeconds."""
    SESSION_TIMEOUT = "SessionTimeout"
    """Logged off: the pool's maxSessionSeconds passed since binding."""
    DESKTOP_LOST = "DesktopLost"
    """The bound desktop VM disappeared."""


class SessionStatus(common.Model):
    """What the display gateway saw of the claim's viewers."""

    connected: bool | None = None
    """A full (not view-only) viewer is connected now."""
    last_connected_at: common.Timestamp | None = None
    """When a viewer last connected."""
    last_disconnected_at: common.Timestamp | None = None
    """When the last viewer disconnected."""
    last_input_at: common.Timestamp | None = None
    """When the viewer last sent keyboard or mouse input."""


class DesktopClaimStatus(conditions.Status):
    """Observed state of a claim."""

    phase: DesktopClaimPhase | None = None
    """Lifecycle phase."""
    vm_name: common.ShortString | None = None
    """VirtualMachine bound to the claim."""
    url: Annotated[str, Field(max_length=2048)] | None = None
    """Browser URL of the desktop (noVNC page through the display gateway)."""
    view_url: Annotated[str, Field(max_length=2048)] | None = None
    """View-only browser URL, when spec.allowShadowing is set."""
    token_expires_at: common.Timestamp | None = None
    """When the tokens in url and viewUrl stop admitting new connections (the
    controller mints fresh ones before then while the claim is bound)."""
    bound_at: common.Timestamp | None = None
    """When the claim was bound."""
    released_at: common.Timestamp | None = None
    """When the session was logged off (timeout), after which the claim stays Released."""
    session: SessionStatus | None = None
    """Viewer activity, written by the display gateway (field manager
    :data:`GATEWAY_FIELD_MANAGER`); the controller reads it for the idle and
    disconnected timeouts."""


class DesktopClaim(common.Resource):
    """One user's request for a desktop from a DesktopPool."""

    kind: Literal["DesktopClaim"] = "DesktopClaim"
    """Always DesktopClaim."""
    spec: DesktopClaimSpec
    """Which pool and for whom."""
    status: DesktopClaimStatus | None = None
    """Observed state."""
