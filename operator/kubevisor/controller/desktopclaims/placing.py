"""Which application server a published-application session runs on (pure).

In a pool with ``mode: Application`` the VMs are application servers shared by many
users (the XenApp / Remote Desktop Services model): a claim is a *session* placed on one
server, recorded in the claim's own ``status.vmName`` (many claims name one server, so
the desktop annotations of the desktop mode do not apply). Rules, all claims of a pool at
once, oldest first:

- A claim whose server still exists (and is not being deleted) stays on it — a running
  session never moves. Bound when the server serves (:attr:`Desktop.serving`: it runs
  and its GuestReady condition says its sshd listens), Starting otherwise: a browser
  given the URL of a server still booting would be disconnected at once.
- A claim being deleted holds nothing (the gateway ends its session when the claim is
  gone): its finalizer is removed. A timeout (:mod:`logoff`) releases it as in the desktop
  mode.
- Not allowed / over ``perUserLimit``: as in the desktop mode (``binding``).
- A new claim goes to the least-loaded serving server (:func:`least_loaded`: fewest
  sessions, ties by name, so placement is deterministic), else to a running one still
  booting its sshd (Starting, ``WaitingForDesktop``: it binds there once it serves);
  none running: it waits (``WaitingForDesktop``) and counts as waiting, so the pool's
  sizing starts one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime

from kubevisor.api.desktopclaims import ClaimReason, DesktopClaimPhase
from kubevisor.api.desktoppools import Desktop, DesktopPoolSpec
from kubevisor.controller.desktopclaims import binding, logoff
from kubevisor.controller.desktopclaims.binding import Claim, ClaimDecision, Decision, State


def least_loaded(servers: Sequence[Desktop], load: Mapping[str, int]) -> str | None:
    """The server a new session goes to (``load``: server → sessions): the serving one
    with the fewest sessions; none serving, the least-loaded one that runs and still
    boots its sshd (the session binds there once it serves, and no further server is
    started for it). Ties broken by name; None when none runs."""
    live = [s for s in servers if s.ready]
    usable = [s for s in live if s.serving] or live
    if not usable:
        return None
    return min(usable, key=lambda s: (load.get(s.name, 0), s.name)).name


def sessions(claims: Sequence[Claim]) -> Counter[str]:
    """Sessions per server: claims that name a server and are not over (being deleted
    or Released)."""
    return Counter(
        c.vm_name
        for c in claims
        if c.vm_name and not c.deleting and c.phase is not DesktopClaimPhase.RELEASED
    )


def decide(
    spec: DesktopPoolSpec | None,
    pool: str,
    servers: Sequence[Desktop],
    claims: Sequence[Claim],
    *,
    now: datetime,
) -> Decision:
    """Place every claim of an Application pool (see the module docstring)."""
    ordered = sorted(claims, key=lambda c: (c.created, c.name))
    by_name = {s.name: s for s in servers if not s.deleting}
    load: Counter[str] = Counter()
    holding: Counter[str] = Counter()
    out: list[ClaimDecision] = []
    pending: list[Claim] = []
    for claim in ordered:
        if claim.deleting:
            out.append(_finish(claim))
            continue
        if claim.phase is DesktopClaimPhase.RELEASED:
            out.append(binding.still_released(claim))
            continue
        server = by_name.get(claim.vm_name or "")
        if server is None:
            pending.append(claim)
            continue
        ended = (
            None if spec is None else logoff.timed_out(spec, claim.bound_at, claim.session, now=now)
        )
        if ended is not None:
            out.append(ClaimDecision(claim.name, State.RELEASED, ended[0], ended[1]))
            continue
        load[server.name] += 1
        holding[claim.user] += 1
        out.append(_on(claim, server))
    waiting = 0
    for claim in pending:
        decision = _place(spec, pool, servers, claim, load, holding)
        if decision.state is State.WAITING and decision.reason is ClaimReason.WAITING_FOR_DESKTOP:
            waiting += 1
        out.append(decision)
    return Decision(claims=tuple(out), waiting=waiting)


def _place(
    spec: DesktopPoolSpec | None,
    pool: str,
    servers: Sequence[Desktop],
    claim: Claim,
    load: Counter[str],
    holding: Counter[str],
) -> ClaimDecision:
    if spec is None:
        return ClaimDecision(
            claim.name, State.WAITING, ClaimReason.POOL_NOT_FOUND,
            f"DesktopPool {pool} does not exist",
        )  # fmt: skip
    if not binding.allowed(spec, claim):
        return ClaimDecision(
            claim.name, State.REFUSED, ClaimReason.NOT_ALLOWED,
            f"user {claim.user} is not allowed in pool {pool} (not in allowedUsers, "
            "no group in allowedGroups)",
        )  # fmt: skip
    count = holding[claim.user]
    if spec.per_user_limit is not None and count >= spec.per_user_limit:
        return ClaimDecision(
            claim.name, State.WAITING, ClaimReason.USER_LIMIT_REACHED,
            f"user {claim.user} already holds {count} session(s) of pool {pool}, "
            f"the pool's perUserLimit is {spec.per_user_limit}",
        )  # fmt: skip
    chosen = least_loaded([s for s in servers if not s.deleting], load)
    if chosen is None:
        return ClaimDecision(
            claim.name, State.WAITING, ClaimReason.WAITING_FOR_DESKTOP,
            f"no application server of pool {pool} is running yet; the pool is starting one",
        )  # fmt: skip
    load[chosen] += 1
    holding[claim.user] += 1
    server = next(s for s in servers if s.name == chosen)
    return _on(claim, server)


def _on(claim: Claim, server: Desktop) -> ClaimDecision:
    if server.serving:
        return ClaimDecision(
            claim.name, State.BOUND, ClaimReason.BOUND,
            f"session on application server {server.name}", desktop=server.name,
        )  # fmt: skip
    if server.ready:
        why = "runs but its sshd is not up yet (no GuestReady condition)"
    else:
        why = "is not running" + (f" ({server.reason})" if server.reason else "")
    return ClaimDecision(
        claim.name, State.STARTING, ClaimReason.WAITING_FOR_DESKTOP,
        f"application server {server.name} of the session {why}", desktop=server.name,
    )  # fmt: skip


def _finish(claim: Claim) -> ClaimDecision:
    return ClaimDecision(
        claim.name, State.FINALIZE, ClaimReason.BOUND,
        "the claim is deleted; the gateway ends its session",
    )  # fmt: skip
