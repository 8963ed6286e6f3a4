"""Which node entries of a VRF the agent announces as a Warning Event (selecting.failure)."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.agent.vrfs import selecting

pytestmark = pytest.mark.unit

REFUSED = {"ready": False, "reason": "InvalidDaemonConfig", "message": "bird: syntax error"}


@pytest.mark.parametrize(
    ("have", "entry", "want"),
    [
        (None, REFUSED, ("InvalidDaemonConfig", "bird: syntax error")),
        (
            {"ready": True, "reason": "AsExpected"},
            REFUSED,
            ("InvalidDaemonConfig", "bird: syntax error"),
        ),
        # a new message for the same reason is news
        (
            {**REFUSED, "message": "bird: other"},
            REFUSED,
            ("InvalidDaemonConfig", "bird: syntax error"),
        ),
        (REFUSED, REFUSED, None),  # already shown: the aggregator is not even asked
        (None, {"ready": True, "reason": "AsExpected", "message": None}, None),
        (None, {"ready": False, "reason": "WaitingForTable", "message": "wait"}, None),  # a wait
        (
            None,
            {"ready": False, "reason": "KernelError", "message": None},
            ("KernelError", "KernelError"),
        ),
    ],
)
def test_failure(
    have: dict[str, Any] | None, entry: dict[str, Any], want: tuple[str, str] | None
) -> None:
    assert selecting.failure(have, entry) == want
