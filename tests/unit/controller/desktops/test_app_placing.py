"""Published-application placement: a new session goes to the least-loaded serving
server (ties by name; one that runs but still boots its sshd, no GuestReady, only when
none serves, and the claim stays unbound there until it serves), a placed session stays
where it is, none running makes it wait (and count as waiting, so the pool's sizing
starts a server), and the pool's spec rule
"application exactly when mode is Application" holds in the model too."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

from kubevisor.api import appservers, desktoppools
from kubevisor.api.desktopclaims import ClaimReason, DesktopClaimPhase
from kubevisor.api.desktoppools import Desktop, DesktopPoolSpec
from kubevisor.controller.desktopclaims import placing
from kubevisor.controller.desktopclaims.binding import Claim, State
from kubevisor.controller.desktoppools import sizing

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
R = ClaimReason
APP = {"mode": "Application", "application": "xterm"}


def _spec(**kw: Any) -> DesktopPoolSpec:
    return DesktopPoolSpec.model_validate({"templateRef": {"name": "t"}, "max": 3, **APP, **kw})


def _s(name: str, **kw: Any) -> Desktop:
    return Desktop(
        name=name, phase=kw.pop("phase", "Running"), guest_ready=kw.pop("guest_ready", True), **kw
    )


def _c(name: str, user: str = "alice", *, at: int = 0, **kw: Any) -> Claim:
    return Claim(name=name, user=user, created=f"2026-01-01T00:00:{at:02d}Z", **kw)


@pytest.mark.parametrize(
    ("case", "servers", "load", "want"),
    [
        ("none", [], {}, None),
        ("none running", [_s("a", phase="Pending")], {}, None),
        ("the only one", [_s("a")], {"a": 7}, "a"),
        ("fewest sessions", [_s("a"), _s("b")], {"a": 2, "b": 1}, "b"),
        ("tie by name", [_s("b"), _s("a")], {"a": 1, "b": 1}, "a"),
        ("unlisted is empty", [_s("a"), _s("b")], {"a": 1}, "b"),
        ("not running skipped", [_s("a"), _s("b", phase="Starting")], {"a": 5}, "a"),
        ("deleting skipped", [_s("a", deleting=True), _s("b")], {"b": 3}, "b"),
        ("serving before booting", [_s("a"), _s("b", guest_ready=False)], {"a": 9}, "a"),
        ("booting if none serves", [_s("a", guest_ready=False), _s("b", phase="P")], {}, "a"),
    ],
)
def test_least_loaded(
    case: str, servers: list[Desktop], load: dict[str, int], want: str | None
) -> None:
    assert placing.least_loaded(servers, load) == want, case


BOUND = DesktopClaimPhase.BOUND


@pytest.mark.parametrize(
    ("case", "servers", "claims", "want", "waiting"),
    [
        (
            "new claims spread over servers, oldest first",
            [_s("a"), _s("b")],
            [_c("c1", at=1), _c("c2", at=2), _c("c3", at=3)],
            {"c1": (State.BOUND, R.BOUND, "a"), "c2": (State.BOUND, R.BOUND, "b"),
             "c3": (State.BOUND, R.BOUND, "a")},
            0,
        ),
        (
            "a placed session stays; the new one goes to the emptier server",
            [_s("a"), _s("b")],
            [_c("old1", vm_name="b", phase=BOUND), _c("old2", vm_name="b", phase=BOUND),
             _c("new", at=5)],
            {"old1": (State.BOUND, R.BOUND, "b"), "old2": (State.BOUND, R.BOUND, "b"),
             "new": (State.BOUND, R.BOUND, "a")},
            0,
        ),
        (
            "several users share one server",
            [_s("a")],
            [_c("c1", "alice"), _c("c2", "bob", at=1)],
            {"c1": (State.BOUND, R.BOUND, "a"), "c2": (State.BOUND, R.BOUND, "a")},
            0,
        ),
        (
            "no server running: wait and count",
            [_s("a", phase="Pending")],
            [_c("c1")],
            {"c1": (State.WAITING, R.WAITING_FOR_DESKTOP, None)},
            1,
        ),
        (
            "server runs, sshd not up: the new claim starts on it, not bound, not counted",
            [_s("a", guest_ready=False)],
            [_c("c1")],
            {"c1": (State.STARTING, R.WAITING_FOR_DESKTOP, "a")},
            0,
        ),
        (
            "placed claim stays unbound until its server's sshd is up",
            [_s("a", guest_ready=False)],
            [_c("c1", vm_name="a", phase=DesktopClaimPhase.PENDING)],
            {"c1": (State.STARTING, R.WAITING_FOR_DESKTOP, "a")},
            0,
        ),
        (
            "server gone: placed again",
            [_s("b")],
            [_c("c1", vm_name="a", phase=BOUND)],
            {"c1": (State.BOUND, R.BOUND, "b")},
            0,
        ),
        (
            "server not running: starting on it",
            [_s("a", phase="Starting")],
            [_c("c1", vm_name="a", phase=DesktopClaimPhase.PENDING)],
            {"c1": (State.STARTING, R.WAITING_FOR_DESKTOP, "a")},
            0,
        ),
        (
            "deleted claim is finished, released stays released",
            [_s("a")],
            [_c("gone", vm_name="a", deleting=True),
             _c("done", vm_name="a", phase=DesktopClaimPhase.RELEASED)],
            {"gone": (State.FINALIZE, R.BOUND, None),
             "done": (State.RELEASED, R.SESSION_TIMEOUT, None)},
            0,
        ),
    ],
)  # fmt: skip
def test_decide(
    case: str,
    servers: list[Desktop],
    claims: list[Claim],
    want: dict[str, tuple[State, ClaimReason, str | None]],
    waiting: int,
) -> None:
    d = placing.decide(_spec(), "apps", servers, claims, now=NOW)
    assert {c.claim: (c.state, c.reason, c.desktop) for c in d.claims} == want, case
    assert d.waiting == waiting, case
    assert d.releases == (), case


def test_the_sentence_says_the_server_boots_its_sshd() -> None:
    d = placing.decide(_spec(), "apps", [_s("a", guest_ready=False)], [_c("c1")], now=NOW)
    assert "sshd is not up yet" in d.of("c1").message
    d = placing.decide(_spec(), "apps", [_s("a", guest_ready=True)], [_c("c1")], now=NOW)
    assert d.of("c1").state is State.BOUND


@pytest.mark.parametrize(
    ("case", "conditions", "want"),
    [
        ("no conditions", [], False),
        ("GuestReady True", [{"type": "GuestReady", "status": "True"}], True),
        ("GuestReady False", [{"type": "GuestReady", "status": "False"}], False),
        ("only Ready", [{"type": "Ready", "status": "True"}], False),
    ],
)
def test_a_server_serves_with_its_guest_ready_condition(
    case: str, conditions: list[dict[str, str]], want: bool
) -> None:
    vm = {"metadata": {"name": "a"}, "status": {"phase": "Running", "conditions": conditions}}
    assert desktoppools.desktop(vm).serving is want, case


def test_per_user_limit_and_allowed_users() -> None:
    spec = _spec(perUserLimit=1, allowedUsers=["alice"])
    d = placing.decide(spec, "apps", [_s("a")], [_c("c1"), _c("c2", at=1), _c("b", "bob")], now=NOW)
    got = {c.claim: (c.state, c.reason) for c in d.claims}
    assert got == {
        "c1": (State.BOUND, R.BOUND),
        "c2": (State.WAITING, R.USER_LIMIT_REACHED),
        "b": (State.REFUSED, R.NOT_ALLOWED),
    }


def test_sessions_count_only_live_claims() -> None:
    claims = [
        _c("c1", vm_name="a", phase=BOUND),
        _c("c2", vm_name="a", phase=BOUND),
        _c("c3", vm_name="b", phase=BOUND, deleting=True),
        _c("c4", vm_name="b", phase=DesktopClaimPhase.RELEASED),
    ]
    assert placing.sessions(claims) == {"a": 2}


def test_a_server_with_sessions_is_held_and_never_scaled_in() -> None:
    spec = _spec(min=0, spare=0)
    busy, idle = _s("a", sessions=2), _s("b")
    plan = sizing.plan(spec, [busy, idle], waiting=0)
    assert plan.target == 1 and plan.remove == ("b",)


@pytest.mark.parametrize(
    "extra",
    [{"mode": "Application"}, {"application": "xterm"}, {"mode": "Desktop", "application": "x"}],
)
def test_application_exactly_with_its_mode(extra: dict[str, str]) -> None:
    with pytest.raises(pydantic.ValidationError, match="application is required exactly"):
        DesktopPoolSpec.model_validate({"templateRef": {"name": "t"}, "max": 1, **extra})


def test_servers_reference_the_pool_key_secret() -> None:
    pool = {"metadata": {"name": "apps", "namespace": "n", "uid": "u"},
            "spec": {"templateRef": {"name": "t"}, **APP}}  # fmt: skip
    body = desktoppools.desktop_body(pool, "apps-1")
    secret = body["spec"][desktoppools.ACCESS_FIELD][desktoppools.SSH_KEY_SECRET_FIELD]
    assert secret == appservers.pool_key_secret("apps")
    desktop = desktoppools.desktop_body({**pool, "spec": {"templateRef": {"name": "t"}}}, "d")
    assert desktoppools.ACCESS_FIELD not in desktop["spec"]
