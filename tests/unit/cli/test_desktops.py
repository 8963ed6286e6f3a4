"""``kubevisor desktop claim``: the claim it creates and how it reads the claim's status."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.cli import desktops

pytestmark = pytest.mark.unit


def test_claim_body_generates_a_name_from_the_pool() -> None:
    body = desktops.claim_body("office", "alice", groups_=["staff"], shadow=True, name=None)
    assert body["metadata"] == {"generateName": "office-"}
    assert body["spec"] == {
        "poolRef": {"name": "office"},
        "user": "alice",
        "groups": ["staff"],
        "allowShadowing": True,
    }
    named = desktops.claim_body("office", "bob", groups_=[], shadow=False, name="mine")
    assert named["metadata"] == {"name": "mine"} and "groups" not in named["spec"]


def _cond(reason: str) -> dict[str, Any]:
    return {"type": "Bound", "status": "False", "reason": reason, "message": "why"}


@pytest.mark.parametrize(
    ("status", "want"),
    [
        ({}, None),
        ({"phase": "Bound", "url": "http://g/x"}, ("bound", "http://g/x")),
        ({"phase": "Bound"}, None),
        ({"phase": "Failed", "conditions": [_cond("NotAllowed")]}, ("failed", "NotAllowed: why")),
        (
            {"phase": "Released", "conditions": [_cond("IdleTimeout")]},
            ("failed", "IdleTimeout: why"),
        ),
        (
            {"phase": "Pending", "conditions": [_cond("PoolExhausted")]},
            ("waiting", "PoolExhausted: why"),
        ),
    ],
)
def test_outcome(status: dict[str, Any], want: tuple[str, str] | None) -> None:
    assert desktops.outcome(status) == want
