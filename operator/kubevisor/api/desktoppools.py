"""DesktopPool: desktop VMs cloned from a template, kept ready for users to claim and
reached from a browser through the display gateway."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from kubevisor.api import common, conditions

Assignment = Literal["floating", "dedicated"]
LogoffPolicy = Literal["keep", "refresh", "delete"]


class DesktopPoolPhase(StrEnum):
    """Lifecycle phase of a pool."""

    PENDING = "Pending"
    SCALING = "Scaling"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


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
        )
    )

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

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min > self.max:
            raise ValueError("min must not exceed max")
        if self.spare > self.max:
            raise ValueError("spare must not exceed max")
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


class DesktopPool(common.Resource):
    """A pool of desktop VMs handed to users through DesktopClaims."""

    kind: Literal["DesktopPool"] = "DesktopPool"
    """Always DesktopPool."""
    spec: DesktopPoolSpec
    """Pool size and hand-out policy."""
    status: DesktopPoolStatus | None = None
    """Observed state."""
