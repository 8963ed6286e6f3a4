"""Which claim gets which desktop, which waits and why, which session ends (pure).

One decision covers every claim of one pool at once (claims compete for the same
desktops), oldest claim first:

- A claim already holding a desktop (the desktop's ``kubevisor.io/desktop-claim``
  annotation names it) keeps it — unless the claim is being deleted or a timeout
  (:mod:`logoff`) ends the session; then the desktop is released by the pool's
  ``logoffPolicy`` and the claim is Released (or its finalizer removed).
- A user who is not allowed in the pool is refused (``NotAllowed``); a user holding
  ``perUserLimit`` desktops waits (``UserLimitReached``).
- Floating: the first free running desktop (unassigned, not being deleted). None free:
  the claim waits — ``WaitingForDesktop`` while the pool may still grow (the pool
  reconciler counts waiting claims into its target), ``PoolExhausted`` at ``max``.
- Dedicated: the user's own desktop (``kubevisor.io/desktop-user``) every time; on the
  first claim a free running unassigned desktop becomes theirs, else one is created for
  them named :func:`desktoppools.desktop_name` of (pool, user), up to ``max``.
- Desktops naming a claim that no longer exists are released by the policy too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from kubevisor.api import desktoppools
from kubevisor.api.desktopclaims import ClaimReason, DesktopClaimPhase, SessionStatus
from kubevisor.api.desktoppools import Desktop, DesktopPoolSpec, LogoffPolicy
from kubevisor.controller.desktopclaims import logoff


@dataclass(frozen=True)
class Claim:
    """One DesktopClaim as the decision reads it."""

    name: str
    user: str
    groups: tuple[str, ...] = ()
    created: str = ""
    deleting: bool = False
    phase: DesktopClaimPhase | None = None
    bound_at: datetime | None = None
    session: SessionStatus | None = None
    ended: tuple[ClaimReason, str] | None = None
    """Released: why its session ended (its Bound condition), kept as it was."""
    vm_name: str | None = None
    """Its status.vmName: in an Application pool, the server its session is placed on
    (the record of the placement; desktops are recorded on the VM instead)."""


class State(StrEnum):
    """Where a claim stands after the decision."""

    BOUND = "Bound"
    """Holds a running desktop."""
    STARTING = "Starting"
    """Holds a desktop that is not running yet."""
    WAITING = "Waiting"
    """Holds nothing yet; waits (reason says for what)."""
    REFUSED = "Refused"
    """Will not get a desktop from this pool (NotAllowed)."""
    RELEASED = "Released"
    """The session ended; the claim stays Released until deleted."""
    FINALIZE = "Finalize"
    """Being deleted and holds nothing (any more): remove the finalizer."""


@dataclass(frozen=True)
class Release:
    """Apply ``policy`` to ``desktop`` (end of a session)."""

    desktop: str
    policy: LogoffPolicy
    dedicated: bool


@dataclass(frozen=True)
class ClaimDecision:
    """The outcome for one claim."""

    claim: str
    state: State
    reason: ClaimReason
    message: str
    desktop: str | None = None
    """The desktop it holds (BOUND, STARTING)."""
    reserve: str | None = None
    """An existing desktop to annotate as this claim's (and, dedicated, this user's)."""
    create: str | None = None
    """A desktop to create for this claim (dedicated)."""


@dataclass(frozen=True)
class Decision:
    """Everything one pass does to one pool's claims and desktops."""

    claims: tuple[ClaimDecision, ...] = ()
    releases: tuple[Release, ...] = ()
    waiting: int = 0
    """Claims waiting for a free desktop: for one the pool may still create (floating)
    or at the pool's max (any assignment; sizing caps its target at max anyway)."""

    def of(self, claim: str) -> ClaimDecision:
        """The decision for ``claim``."""
        return next(c for c in self.claims if c.claim == claim)


def allowed(spec: DesktopPoolSpec, claim: Claim) -> bool:
    """The pool admits the claim's user (both lists empty: everyone)."""
    if not spec.allowed_users and not spec.allowed_groups:
        return True
    return claim.user in spec.allowed_users or any(g in spec.allowed_groups for g in claim.groups)


@dataclass
class _Pool:
    """Working state while the claims are gone through."""

    spec: DesktopPoolSpec
    desktops: dict[str, Desktop]
    taken: set[str] = field(default_factory=set)
    """Desktops bound (or reserved) in this decision or before it."""
    created: list[str] = field(default_factory=list)
    holding: dict[str, int] = field(default_factory=dict)

    @property
    def live(self) -> int:
        return sum(1 for d in self.desktops.values() if not d.deleting) + len(self.created)

    def free(self, *, unassigned: bool) -> list[Desktop]:
        return [
            d
            for d in self.desktops.values()
            if d.ready
            and d.name not in self.taken
            and d.claim is None
            and (not unassigned or d.user is None)
        ]


def decide(
    spec: DesktopPoolSpec | None,
    pool: str,
    desktops: Sequence[Desktop],
    claims: Sequence[Claim],
    *,
    now: datetime,
) -> Decision:
    """The decision for every claim of ``pool`` (``spec`` None: the pool does not exist)."""
    ordered = sorted(claims, key=lambda c: (c.created, c.name))
    by_claim = {d.claim: d for d in desktops if d.claim is not None and not d.deleting}
    names = {c.name for c in claims}
    out: list[ClaimDecision] = []
    releases: list[Release] = []
    dedicated = spec is not None and spec.assignment == "dedicated"
    policy: LogoffPolicy = spec.logoff_policy if spec is not None else "keep"
    released: set[str] = set()
    for d in desktops:
        if d.claim is not None and d.claim not in names and not d.deleting:
            releases.append(Release(d.name, policy, dedicated))
            released.add(d.name)
    state = _Pool(spec or _NO_SPEC, {d.name: d for d in desktops})
    pending: list[Claim] = []
    for claim in ordered:
        held = by_claim.get(claim.name)
        if held is None:
            if claim.deleting:
                out.append(_finalize(claim))
            elif claim.phase is DesktopClaimPhase.RELEASED:
                out.append(still_released(claim))
            else:
                pending.append(claim)
            continue
        ended = _ended(spec, claim, now)
        if ended is not None:
            releases.append(Release(held.name, policy, dedicated))
            released.add(held.name)
            if claim.deleting:
                out.append(_finalize(claim))
            else:
                out.append(ClaimDecision(claim.name, State.RELEASED, ended[0], ended[1]))
            continue
        state.taken.add(held.name)
        state.holding[claim.user] = state.holding.get(claim.user, 0) + 1
        out.append(_holding(claim, held))
    # a desktop kept (policy keep) is free again for the claims still pending
    for name in released:
        d = state.desktops[name]
        if policy == "keep":
            state.desktops[name] = _kept(d, dedicated)
        else:
            state.desktops[name] = _deleting(d)
    waiting = 0
    for claim in pending:
        decision = _bind(state, pool, claim, dedicated=dedicated, exists=spec is not None)
        if decision.state is State.WAITING and (
            decision.reason is ClaimReason.POOL_EXHAUSTED
            or (not dedicated and decision.reason is ClaimReason.WAITING_FOR_DESKTOP)
        ):
            waiting += 1
        out.append(decision)
    return Decision(claims=tuple(out), releases=tuple(releases), waiting=waiting)


_NO_SPEC = DesktopPoolSpec.model_validate({"templateRef": {"name": "none"}, "max": 1})


def _kept(d: Desktop, dedicated: bool) -> Desktop:
    return Desktop(
        name=d.name,
        phase=d.phase,
        user=d.user if dedicated else None,
        node=d.node,
        created=d.created,
        resource_version=d.resource_version,
    )


def _deleting(d: Desktop) -> Desktop:
    return Desktop(name=d.name, phase=d.phase, deleting=True, created=d.created)


def _ended(
    spec: DesktopPoolSpec | None, claim: Claim, now: datetime
) -> tuple[ClaimReason, str] | None:
    if claim.deleting:
        return ClaimReason.BOUND, "the claim was deleted"
    if spec is None:
        return None
    return logoff.timed_out(spec, claim.bound_at, claim.session, now=now)


def _finalize(claim: Claim) -> ClaimDecision:
    return ClaimDecision(
        claim.name,
        State.FINALIZE,
        ClaimReason.BOUND,
        "the claim is deleted; its desktop is released",
    )


def still_released(claim: Claim) -> ClaimDecision:
    """A Released claim stays Released, with the reason its session ended."""
    reason, message = claim.ended or (
        ClaimReason.SESSION_TIMEOUT,
        "the session ended; delete this claim and create a new one for another session",
    )
    return ClaimDecision(claim.name, State.RELEASED, reason, message)


def _holding(claim: Claim, d: Desktop) -> ClaimDecision:
    if d.ready:
        return ClaimDecision(
            claim.name,
            State.BOUND,
            ClaimReason.BOUND,
            f"desktop {d.name} is running",
            desktop=d.name,
        )
    why = f" ({d.reason})" if d.reason else ""
    return ClaimDecision(
        claim.name,
        State.STARTING,
        ClaimReason.WAITING_FOR_DESKTOP,
        f"desktop {d.name} is reserved for this claim and not running yet{why}",
        desktop=d.name,
    )


def _bind(state: _Pool, pool: str, claim: Claim, *, dedicated: bool, exists: bool) -> ClaimDecision:
    spec = state.spec
    if not exists:
        return ClaimDecision(
            claim.name,
            State.WAITING,
            ClaimReason.POOL_NOT_FOUND,
            f"DesktopPool {pool} does not exist",
        )
    if not allowed(spec, claim):
        return ClaimDecision(
            claim.name,
            State.REFUSED,
            ClaimReason.NOT_ALLOWED,
            f"user {claim.user} is not allowed in pool {pool} (not in allowedUsers, "
            "no group in allowedGroups)",
        )
    count = state.holding.get(claim.user, 0)
    if spec.per_user_limit is not None and count >= spec.per_user_limit:
        return ClaimDecision(
            claim.name,
            State.WAITING,
            ClaimReason.USER_LIMIT_REACHED,
            f"user {claim.user} already holds {count} desktop(s) of pool {pool}, "
            f"the pool's perUserLimit is {spec.per_user_limit}",
        )
    chosen = _choose(state, pool, claim, dedicated=dedicated)
    if isinstance(chosen, ClaimDecision):
        return chosen
    state.holding[claim.user] = count + 1
    d = state.desktops.get(chosen)
    if d is None:  # created for the claim
        state.created.append(chosen)
        state.taken.add(chosen)
        return ClaimDecision(
            claim.name,
            State.STARTING,
            ClaimReason.WAITING_FOR_DESKTOP,
            f"desktop {chosen} is being created for user {claim.user}",
            desktop=chosen,
            create=chosen,
        )
    state.taken.add(chosen)
    decision = _holding(claim, d)
    return ClaimDecision(
        decision.claim, decision.state, decision.reason, decision.message, chosen, reserve=chosen
    )


def _choose(state: _Pool, pool: str, claim: Claim, *, dedicated: bool) -> str | ClaimDecision:
    spec = state.spec
    if dedicated:
        own = [
            d
            for d in state.desktops.values()
            if d.user == claim.user and d.claim is None and d.name not in state.taken
        ]
        live_own = [d for d in own if not d.deleting]
        if live_own:
            return sorted(live_own, key=lambda d: (not d.ready, d.name))[0].name
        name = _own_name(state, pool, claim.user)
        previous = state.desktops.get(name)
        if previous is not None and previous.deleting:
            return ClaimDecision(
                claim.name,
                State.WAITING,
                ClaimReason.WAITING_FOR_DESKTOP,
                f"desktop {name} of user {claim.user} is being refreshed; it is created "
                "anew once the old one is gone",
            )
        free = state.free(unassigned=True)
        if free:
            return free[0].name
        if previous is None and state.live < spec.max:
            return name
    else:
        free = state.free(unassigned=False)
        if free:
            return free[0].name
        starting = any(
            not d.deleting and d.claim is None and d.name not in state.taken
            for d in state.desktops.values()
        )
        if starting or state.live < spec.max:
            return ClaimDecision(
                claim.name,
                State.WAITING,
                ClaimReason.WAITING_FOR_DESKTOP,
                f"no free desktop in pool {pool} is running yet; the pool is starting one",
            )
    return ClaimDecision(
        claim.name,
        State.WAITING,
        ClaimReason.POOL_EXHAUSTED,
        f"all {spec.max} desktops of pool {pool} (its max) are in use; the claim waits "
        "for one to be released",
    )


def _own_name(state: _Pool, pool: str, user: str) -> str:
    """The user's first desktop name not held by another of their claims: (pool, user),
    then (pool, user#1), ... (a perUserLimit above 1 gives a user several)."""
    for k in range(len(state.desktops) + len(state.created) + 1):
        name = desktoppools.desktop_name(pool, user if k == 0 else f"{user}#{k}")
        d = state.desktops.get(name)
        if name not in state.created and (d is None or d.deleting or d.user == user):
            if d is None or d.deleting or (d.claim is None and name not in state.taken):
                return name
    return desktoppools.desktop_name(pool, user)
