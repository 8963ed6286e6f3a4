"""Claim binding: floating takes any free running desktop, dedicated the user's own (made
on first claim), the per-user limit and allowed users hold, an exhausted pool makes the
claim wait with a reason, and deletion or a timeout releases by the logoff policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubevisor.api import desktoppools
from kubevisor.api.desktopclaims import ClaimReason, DesktopClaimPhase, SessionStatus
from kubevisor.api.desktoppools import Desktop, DesktopPoolSpec
from kubevisor.controller.desktopclaims import binding
from kubevisor.controller.desktopclaims.binding import Claim, Release, State

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
R = ClaimReason


def _spec(**kw: Any) -> DesktopPoolSpec:
    return DesktopPoolSpec.model_validate({"templateRef": {"name": "t"}, "max": 3, **kw})


def _d(name: str, **kw: Any) -> Desktop:
    return Desktop(name=name, phase=kw.pop("phase", "Running"), **kw)


def _c(name: str, user: str = "alice", *, at: int = 0, **kw: Any) -> Claim:
    return Claim(name=name, user=user, created=f"2026-01-01T00:00:{at:02d}Z", **kw)


def _decide(spec: DesktopPoolSpec | None, desktops: list[Desktop], claims: list[Claim]) -> Any:
    return binding.decide(spec, "office", desktops, claims, now=NOW)


def _outcome(decision: binding.Decision) -> dict[str, tuple[State, ClaimReason, str | None]]:
    return {c.claim: (c.state, c.reason, c.desktop) for c in decision.claims}


ALICE = desktoppools.desktop_name("office", "alice")
BOB = desktoppools.desktop_name("office", "bob")


@pytest.mark.parametrize(
    ("case", "spec", "desktops", "claims", "want", "waiting"),
    [
        (
            "floating: oldest claim gets the first free running desktop",
            _spec(),
            [_d("d1"), _d("d2", phase="Scheduling")],
            [_c("late", "bob", at=5), _c("early", at=1)],
            {
                "early": (State.BOUND, R.BOUND, "d1"),
                "late": (State.WAITING, R.WAITING_FOR_DESKTOP, None),
            },
            1,
        ),
        (
            "floating: a bound claim keeps its desktop",
            _spec(),
            [_d("d1", claim="c1", user="alice"), _d("d2")],
            [_c("c1")],
            {"c1": (State.BOUND, R.BOUND, "d1")},
            0,
        ),
        (
            "floating: exhausted at max, the claim waits with PoolExhausted",
            _spec(max=2),
            [_d("d1", claim="a"), _d("d2", claim="b")],
            [_c("a", at=1), _c("b", "bob", at=2), _c("c", "carol", at=3)],
            {
                "a": (State.BOUND, R.BOUND, "d1"),
                "b": (State.BOUND, R.BOUND, "d2"),
                "c": (State.WAITING, R.POOL_EXHAUSTED, None),
            },
            1,
        ),
        (
            "not allowed: refused with NotAllowed",
            _spec(allowedUsers=["bob"], allowedGroups=["staff"]),
            [_d("d1"), _d("d2")],
            [_c("a"), _c("b", "bob"), _c("s", "sam", groups=("staff",))],
            {
                "a": (State.REFUSED, R.NOT_ALLOWED, None),
                "b": (State.BOUND, R.BOUND, "d1"),
                "s": (State.BOUND, R.BOUND, "d2"),
            },
            0,
        ),
        (
            "per-user limit: the second claim of a user waits",
            _spec(perUserLimit=1),
            [_d("d1", claim="a1"), _d("d2")],
            [_c("a1", at=1), _c("a2", at=2)],
            {
                "a1": (State.BOUND, R.BOUND, "d1"),
                "a2": (State.WAITING, R.USER_LIMIT_REACHED, None),
            },
            0,
        ),
        (
            "pool missing: PoolNotFound",
            None,
            [],
            [_c("a")],
            {"a": (State.WAITING, R.POOL_NOT_FOUND, None)},
            0,
        ),
        (
            "dedicated: first claim creates the user's named desktop",
            _spec(assignment="dedicated"),
            [],
            [_c("a")],
            {"a": (State.STARTING, R.WAITING_FOR_DESKTOP, ALICE)},
            0,
        ),
        (
            "dedicated: the user's kept desktop again, not a free one",
            _spec(assignment="dedicated"),
            [_d("d0"), _d(ALICE, user="alice")],
            [_c("a")],
            {"a": (State.BOUND, R.BOUND, ALICE)},
            0,
        ),
        (
            "dedicated: a free unassigned spare becomes a new user's",
            _spec(assignment="dedicated"),
            [_d("d0"), _d(ALICE, user="alice")],
            [_c("b", "bob")],
            {"b": (State.BOUND, R.BOUND, "d0")},
            0,
        ),
        (
            "dedicated: the user's desktop still being refreshed: wait",
            _spec(assignment="dedicated"),
            [_d(ALICE, user="alice", deleting=True)],
            [_c("a")],
            {"a": (State.WAITING, R.WAITING_FOR_DESKTOP, None)},
            0,
        ),
        (
            "dedicated: at max and no desktop of the user: PoolExhausted",
            _spec(assignment="dedicated", max=1),
            [_d(BOB, user="bob")],
            [_c("a")],
            {"a": (State.WAITING, R.POOL_EXHAUSTED, None)},
            1,
        ),
        (
            "a Released claim stays released and takes nothing",
            _spec(),
            [_d("d1")],
            [_c("a", phase=DesktopClaimPhase.RELEASED)],
            {"a": (State.RELEASED, R.SESSION_TIMEOUT, None)},
            0,
        ),
    ],
)
def test_binding(
    case: str,
    spec: DesktopPoolSpec | None,
    desktops: list[Desktop],
    claims: list[Claim],
    want: dict[str, tuple[State, ClaimReason, str | None]],
    waiting: int,
) -> None:
    d = _decide(spec, desktops, claims)
    assert _outcome(d) == want, case
    assert d.waiting == waiting, case


def test_reserve_and_create_name_the_desktop_to_write() -> None:
    d = _decide(_spec(assignment="dedicated"), [_d("d0")], [_c("b", "bob"), _c("a", at=1)])
    assert d.of("b").reserve == "d0" and d.of("b").create is None
    # alice's claim: no free spare left, so her own desktop is created
    assert d.of("a").create == ALICE and d.of("a").reserve is None


@pytest.mark.parametrize(
    ("policy", "assignment"),
    [("keep", "floating"), ("refresh", "floating"), ("delete", "dedicated")],
)
def test_deleted_claim_releases_by_policy_and_finalizes(policy: str, assignment: str) -> None:
    spec = _spec(logoffPolicy=policy, assignment=assignment)
    d = _decide(spec, [_d("d1", claim="a", user="alice")], [_c("a", deleting=True)])
    assert d.releases == (Release("d1", policy, assignment == "dedicated"),)  # type: ignore[arg-type]
    assert d.of("a").state is State.FINALIZE


def test_kept_desktop_is_free_for_the_next_claim_in_the_same_pass() -> None:
    spec = _spec(logoffPolicy="keep", max=1)
    d = _decide(spec, [_d("d1", claim="a")], [_c("a", deleting=True), _c("b", "bob", at=2)])
    assert d.of("b").state is State.BOUND and d.of("b").desktop == "d1"


def test_refreshed_desktop_is_not_handed_out() -> None:
    spec = _spec(logoffPolicy="refresh", max=1)
    d = _decide(spec, [_d("d1", claim="a")], [_c("a", deleting=True), _c("b", "bob", at=2)])
    assert d.of("b").state is State.WAITING and d.of("b").reason is R.WAITING_FOR_DESKTOP


def test_desktop_of_a_vanished_claim_is_released() -> None:
    d = _decide(_spec(), [_d("d1", claim="gone")], [])
    assert d.releases == (Release("d1", "refresh", False),)


def test_session_timeout_releases_and_marks_released() -> None:
    spec = _spec(maxSessionSeconds=60)
    claim = _c("a", bound_at=NOW - timedelta(seconds=61))
    d = _decide(spec, [_d("d1", claim="a")], [claim])
    assert d.of("a").state is State.RELEASED and d.of("a").reason is R.SESSION_TIMEOUT
    assert [r.desktop for r in d.releases] == ["d1"]


def test_connected_session_is_not_disconnected() -> None:
    spec = _spec(disconnectedTimeoutSeconds=60)
    claim = _c("a", bound_at=NOW - timedelta(hours=1), session=SessionStatus(connected=True))
    d = _decide(spec, [_d("d1", claim="a")], [claim])
    assert d.of("a").state is State.BOUND and not d.releases


def test_a_released_claim_keeps_the_reason_its_session_ended() -> None:
    ended = (R.DISCONNECTED_TIMEOUT, "no viewer")
    d = _decide(_spec(), [], [_c("a", phase=DesktopClaimPhase.RELEASED, ended=ended)])
    assert (d.of("a").reason, d.of("a").message) == ended
