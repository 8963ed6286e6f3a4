"""The controller's API client reads the proxy environment once (``kube.client``):
what it finds for the API server's URL, from real environment variables."""

from __future__ import annotations

import pytest

from kubevisor.controller.kube import client as kube

pytestmark = pytest.mark.unit

API = "https://10.0.0.1:6443"


@pytest.mark.parametrize(
    ("env", "proxy", "headers"),
    [
        ({}, None, {}),
        ({"HTTPS_PROXY": "http://proxy.example:3128"}, "http://proxy.example:3128", {}),
        ({"HTTP_PROXY": "http://proxy.example:3128"}, None, {}),  # an https URL
        ({"HTTPS_PROXY": "http://proxy.example:3128", "NO_PROXY": "10.0.0.1"}, None, {}),
        (
            {"https_proxy": "http://u:p@proxy.example:3128"},
            "http://proxy.example:3128",
            {"Proxy-Authorization": "Basic dTpw"},
        ),
    ],
)
def test_env_proxy_for_the_api_server(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], proxy: str | None, headers: dict[str, str]
) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert kube.env_proxy(API) == (proxy, headers)
