"""bench/vrf.py cleans up everything it made when stopped mid-row by SIGTERM or SIGINT.

The benchmark runs as a real process with real namespaces; the test waits until the row
it means to interrupt has started making namespaces, signals, and then reads the kernel:
no ``kvbench<pid>-*`` namespace, no cgroup directory of that name, no new host link, no
temp dir. The exit code (130) and the "interrupted in row X" line prove the signal landed
mid-row, not after the run had finished on its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kubevisor.devenv.testing import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _netns(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix))
    except FileNotFoundError:
        return []


def _host_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True)
    return {link["ifname"] for link in json.loads(out.stdout)}


def _cgroups(prefix: str) -> list[Path]:
    found = [p for p in CGROUP_ROOT.glob(f"{prefix}*") if p.is_dir()]
    return found + [p for p in CGROUP_ROOT.glob(f"*/{prefix}*") if p.is_dir()]


@pytest.mark.parametrize(
    ("row", "code", "size", "sig"),
    [
        ("product", "p", ["--vrfs", "60", "--routes", "50"], signal.SIGTERM),
        ("ip-batch", "b", ["--vrfs", "300", "--routes", "50"], signal.SIGTERM),
        ("ip-per-object", "o", ["--vrfs", "20", "--routes", "50"], signal.SIGTERM),
        ("ip-per-object", "o", ["--vrfs", "20", "--routes", "50"], signal.SIGINT),
    ],
    ids=["product-SIGTERM", "ip-batch-SIGTERM", "ip-per-object-SIGTERM", "ip-per-object-SIGINT"],
)
def test_signal_mid_row_leaves_nothing_behind(
    row: str, code: str, size: list[str], sig: signal.Signals, tmp_path: Path
) -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (the benchmark makes network namespaces)")
    links_before = _host_links()
    stderr = tmp_path / "stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "vrf.py"), "--rows", row, *size],
            stdout=subprocess.PIPE, stderr=err, cwd=ROOT,
        )  # fmt: skip
    base = f"kvbench{proc.pid}-"
    try:
        vrf_ns = f"{base}{code}-v"
        wait_for(lambda: len(_netns(vrf_ns)) >= 2 or proc.poll() is not None, timeout=60,
                 what=f"row {row} making VRF namespaces", every=0.02)  # fmt: skip
        assert proc.poll() is None, f"benchmark ended before the signal: {stderr.read_text()}"
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = stderr.read_text()
    assert rc == 130, log
    assert f"interrupted in row {row}" in log, log
    assert _netns(base) == []
    assert _cgroups(base) == []
    assert _host_links() == links_before
    assert not list(Path("/tmp").glob(f"{base}*"))
