"""Pool sizing: how many desktops to create from min/max/spare/held/waiting, and which to
remove on scale-in (never one in use; not-running ones, then the newest, first)."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.api.desktoppools import Desktop, DesktopPoolSpec
from kubevisor.controller.desktoppools import sizing

pytestmark = pytest.mark.unit


def _spec(**kw: Any) -> DesktopPoolSpec:
    return DesktopPoolSpec.model_validate({"templateRef": {"name": "t"}, "max": 5, **kw})


def _d(name: str, *, at: str = "2026-01-01T00:00:00Z", **kw: Any) -> Desktop:
    return Desktop(name=name, phase=kw.pop("phase", "Running"), created=at, **kw)


@pytest.mark.parametrize(
    ("case", "spec", "desktops", "waiting", "target", "create", "remove"),
    [
        ("empty pool reaches min+spare", _spec(min=2, spare=1), [], 0, 2, 2, ()),
        ("spare above min", _spec(min=0, spare=2), [], 0, 2, 2, ()),
        (
            "claimed desktops plus spare",
            _spec(min=1, spare=1),
            [_d("a", claim="c1"), _d("b", claim="c2")],
            0,
            3,
            1,
            (),
        ),
        ("waiting claims grow the pool", _spec(min=0, spare=0), [], 2, 2, 2, ()),
        ("never beyond max", _spec(min=0, spare=2, max=3), [_d("a", claim="c")] * 1, 4, 3, 2, ()),
        (
            "deleting desktops do not count",
            _spec(min=2, spare=0),
            [_d("a"), _d("b", deleting=True)],
            0,
            2,
            1,
            (),
        ),
        ("converged", _spec(min=2, spare=1), [_d("a"), _d("b")], 0, 2, 0, ()),
        (
            "scale-in spares the claimed desktop, takes the newest idle one",
            _spec(min=1, spare=0),
            [
                _d("a", claim="c", at="2026-01-01T00:00:09Z"),
                _d("b", at="2026-01-01T00:00:01Z"),
                _d("c", at="2026-01-01T00:00:05Z"),
            ],
            0,
            1,
            0,
            ("c", "b"),
        ),
        (
            "scale-in takes a not-running idle desktop before a running one",
            _spec(min=1, spare=1),
            [
                _d("a", claim="c"),
                _d("b", at="2026-01-01T00:00:01Z", phase="Scheduling"),
                _d("c", at="2026-01-01T00:00:09Z"),
            ],
            0,
            2,
            0,
            ("b",),
        ),
        (
            "all in use: nothing removed even above target",
            _spec(min=0, spare=0, max=2),
            [_d("a", claim="c1"), _d("b", claim="c2")],
            0,
            2,
            0,
            (),
        ),
        (
            "dedicated: a user's kept desktop counts as held and is never removed",
            _spec(min=0, spare=0, assignment="dedicated"),
            [_d("a", user="alice"), _d("b")],
            0,
            1,
            0,
            ("b",),
        ),
        (
            "floating: a user annotation alone does not hold a desktop",
            _spec(min=0, spare=0),
            [_d("a", user="alice")],
            0,
            0,
            0,
            ("a",),
        ),
    ],
)
def test_plan(
    case: str,
    spec: DesktopPoolSpec,
    desktops: list[Desktop],
    waiting: int,
    target: int,
    create: int,
    remove: tuple[str, ...],
) -> None:
    plan = sizing.plan(spec, desktops, waiting=waiting)
    assert (plan.target, plan.create, plan.remove) == (target, create, remove), case
