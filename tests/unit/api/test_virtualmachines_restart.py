"""The restart-token rule the controller and the agent share."""

from __future__ import annotations

import pytest

from kubevisor.api import virtualmachines

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("token", "request_part"),
    [(None, None), ("abc", "abc"), ("abc#1", "abc"), ("abc#12", "abc"), ("#3", None)],
)
def test_restart_request_drops_the_automatic_count(
    token: str | None, request_part: str | None
) -> None:
    assert virtualmachines.restart_request(token) == request_part
