"""The gateway's access log never carries a token (it travels in the query string)."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from kubevisor.gateway import serving

pytestmark = pytest.mark.unit


def test_the_access_log_leaves_the_query_out(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.gateway.access")
    access = serving.AccessLogger(logger, "")
    request = make_mocked_request("GET", "/websockify?token=SECRET.SIGNATURE")
    with caplog.at_level(logging.INFO, logger=logger.name):
        access.log(request, web.Response(status=403), 0.01)
    assert "GET /websockify" in caplog.text and "403" in caplog.text
    assert "SECRET" not in caplog.text and "token" not in caplog.text
