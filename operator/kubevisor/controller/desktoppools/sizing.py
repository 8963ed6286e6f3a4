"""How many desktops a pool should have, and which to remove on scale-in (pure).

The target is ``held + waiting + spare`` desktops, at least ``min`` and at most ``max``:
``held`` are the desktops in use (bound to a claim, or in a dedicated pool assigned to a
user, or an application server with sessions), ``waiting`` the claims that wait for a
free desktop (or, Application mode, for any server to run). Desktops being deleted do not
count. Scale-in removes only desktops nobody holds — never one in use — choosing those
that are not running first (they serve nobody yet), then the newest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kubevisor.api.desktoppools import Desktop, DesktopPoolSpec


@dataclass(frozen=True)
class Plan:
    """What the pool reconciler does to the pool's desktops in one pass."""

    target: int
    """Desktops the pool should have."""
    create: int = 0
    """New (unassigned) desktops to create."""
    remove: tuple[str, ...] = ()
    """Desktops to delete (never held ones)."""


def held(spec: DesktopPoolSpec, d: Desktop) -> bool:
    """``d`` is in use: bound to a claim, (dedicated) kept for a user, or (an
    application server) running sessions."""
    return (
        d.claim is not None
        or d.sessions > 0
        or (spec.assignment == "dedicated" and d.user is not None)
    )


def target(spec: DesktopPoolSpec, desktops: Sequence[Desktop], *, waiting: int) -> int:
    """The number of desktops the pool should have."""
    in_use = sum(1 for d in desktops if not d.deleting and held(spec, d))
    return min(spec.max, max(spec.min, in_use + waiting + spec.spare))


def plan(spec: DesktopPoolSpec, desktops: Sequence[Desktop], *, waiting: int) -> Plan:
    """Create up to the target, or remove idle desktops down to it."""
    want = target(spec, desktops, waiting=waiting)
    live = [d for d in desktops if not d.deleting]
    if len(live) < want:
        return Plan(target=want, create=want - len(live))
    excess = len(live) - want
    if excess == 0:
        return Plan(target=want)
    idle = [d for d in live if not held(spec, d)]
    # not running first, then newest first (created sorts as RFC 3339 text), then name
    idle.sort(key=lambda d: (d.ready, _desc(d.created), d.name))
    return Plan(target=want, remove=tuple(d.name for d in idle[:excess]))


def _desc(text: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in text)
