"""DesktopClaim: one user's request for a desktop from a pool; status carries the
browser URL once bound."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from kubevisor.api import common, conditions


class DesktopClaimPhase(StrEnum):
    """Lifecycle phase of a claim."""

    PENDING = "Pending"
    BOUND = "Bound"
    RELEASED = "Released"
    FAILED = "Failed"


class DesktopClaimSpec(common.Model):
    """Which pool and for whom."""

    pool_ref: common.LocalObjectReference
    """DesktopPool to take a desktop from."""
    user: Annotated[str, Field(min_length=1, max_length=253)]
    """User the desktop is for (dedicated pools give the same user the same desktop)."""


class DesktopClaimStatus(conditions.Status):
    """Observed state of a claim."""

    phase: DesktopClaimPhase | None = None
    """Lifecycle phase."""
    vm_name: common.ShortString | None = None
    """VirtualMachine bound to the claim."""
    url: Annotated[str, Field(max_length=2048)] | None = None
    """Browser URL of the desktop (noVNC page through the display gateway)."""
    bound_at: common.Timestamp | None = None
    """When the claim was bound."""


class DesktopClaim(common.Resource):
    """One user's request for a desktop from a DesktopPool."""

    kind: Literal["DesktopClaim"] = "DesktopClaim"
    """Always DesktopClaim."""
    spec: DesktopClaimSpec
    """Which pool and for whom."""
    status: DesktopClaimStatus | None = None
    """Observed state."""
