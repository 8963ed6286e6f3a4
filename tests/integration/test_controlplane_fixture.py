"""The ``cluster`` fixture serves a real API server and leaves nothing running, even when
the tests that used it fail."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

pytestmark = pytest.mark.integration


def test_discovery_serves_every_kind(cluster: Any) -> None:
    import kubernetes

    from kubevisor.api import groups, kinds

    resources = kubernetes.client.CustomObjectsApi(cluster.api).get_api_resources(
        groups.GROUP, groups.VERSION
    )
    served = {r.name for r in resources.resources}
    assert {k.plural for k in kinds.KINDS} <= served


def _processes_mentioning(needle: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in text:
            found.append(text)
    return found


def test_nothing_is_left_running_after_a_failing_session(tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    (tmp_path / "test_fails.py").write_text(
        textwrap.dedent(
            f"""
            import pathlib

            def test_uses_cluster_then_fails(cluster):
                pathlib.Path({str(record)!r}).write_text(
                    f"{{cluster.server}}\\n{{cluster.state_dir}}\\n"
                )
                assert False, "failing on purpose"
            """
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "kubevisor.devenv.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            "/dev/null",
            str(tmp_path / "test_fails.py"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failing on purpose" in result.stdout
    server, state_dir = record.read_text().split()
    port = urlparse(server).port
    assert port is not None
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "API server port still answers"
    assert _processes_mentioning(state_dir) == []
    assert not Path(state_dir).exists()
