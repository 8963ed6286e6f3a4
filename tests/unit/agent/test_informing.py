"""A watch event older than the agent's own write never replaces it in the cache; a failed
watch is logged with its HTTP status, so an RBAC denial shows."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.agent.runtime import informing as watching

pytestmark = pytest.mark.unit


def _obj(uid: str, rv: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"uid": uid}
    if rv is not None:
        meta["resourceVersion"] = rv
    return {"metadata": meta}


@pytest.mark.parametrize(
    ("cached", "incoming", "stale"),
    [
        (None, _obj("a", "5"), False),
        (_obj("a", "10"), _obj("a", "9"), True),  # queued before our write, arrives after
        (_obj("a", "10"), _obj("a", "10"), False),
        (_obj("a", "10"), _obj("a", "11"), False),
        (_obj("a", "10"), _obj("b", "3"), False),  # recreated object: new uid wins
        (_obj("a", "x"), _obj("a", "9"), False),  # not integers: never guess
        (_obj("a", None), _obj("a", "9"), False),
    ],
)
def test_is_stale(cached: dict[str, Any] | None, incoming: dict[str, Any], stale: bool) -> None:
    assert watching.is_stale(cached, incoming) is stale


class _ApiError(Exception):
    """Shaped like kubernetes_asyncio's ApiException: empty args, status and reason."""

    def __init__(self, status: int | None, reason: str | None) -> None:
        super().__init__()
        self.status, self.reason = status, reason


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (_ApiError(403, "Forbidden"), "_ApiError(403 Forbidden)"),
        (_ApiError(None, "connection reset"), "_ApiError(connection reset)"),
        (OSError("boom"), "OSError('boom')"),
    ],
)
def test_describe_error(exc: BaseException, text: str) -> None:
    assert watching.describe_error(exc) == text
