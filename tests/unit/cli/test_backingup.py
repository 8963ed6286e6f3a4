"""``kubevisor backup``/``restore``: bodies, progress line, figures, the follower (pure)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from kubevisor.api import vmbackups
from kubevisor.cli import backingup

pytestmark = pytest.mark.unit


def test_backup_body_is_a_valid_vmbackup() -> None:
    body = backingup.backup_body(
        "web", "ns", mode=vmbackups.BackupMode.INCREMENTAL, target="/nas", name="web-1"
    )
    parsed = vmbackups.VMBackup.model_validate(body)
    assert parsed.spec.vm_name == "web" and parsed.spec.mode is vmbackups.BackupMode.INCREMENTAL
    assert body["spec"]["target"] == {"path": "/nas", "storage": "shared"}
    assert body["metadata"] == {"name": "web-1", "namespace": "ns"}
    assert backingup.backup_body("web", "ns")["metadata"]["name"].startswith("web-")


def test_restore_body_names_the_backup() -> None:
    body = backingup.restore_body("web-1", "web-back", "ns")
    assert body["spec"]["source"] == {"backup": {"name": "web-1"}}


@pytest.mark.parametrize(
    ("progress", "line"),
    [
        ({"doneBytes": 0}, "[" + "." * 10 + "]   0%"),
        ({"doneBytes": 52428800, "totalBytes": 104857600, "percent": 50},
         "[#####.....]  50%  50/100 MiB"),
    ],
)  # fmt: skip
def test_progress_line(progress: dict[str, Any], line: str) -> None:
    assert backingup.progress_line(progress, width=10) == line


def test_figures_of_an_incremental() -> None:
    st = {
        "phase": "Succeeded",
        "nodeName": "n1",
        "sizeBytes": 3 * 1024**2,
        "durationMs": 812,
        "chain": {"full": "a", "previous": "b", "length": 3},
        "directory": "/nas/ns/c",
    }
    assert backingup.figures("c", st) == (
        "Succeeded: vmbackup/c on n1, 3.0 MiB written, in 812 ms, incremental on b"
        " (chain of 3), at /nas/ns/c"
    )


def test_follow_prints_phases_wait_reason_progress_and_returns_the_end() -> None:
    looks = iter([
        {"status": {"phase": "Pending", "conditions": [
            {"type": "Ready", "status": "False", "reason": "MigrationInProgress",
             "message": "Migration m runs"}]}},
        {"status": {"phase": "Running", "progress": {"doneBytes": 1, "totalBytes": 2,
                                                     "percent": 50}}},
        {"status": {"phase": "Succeeded"}},
    ])  # fmt: skip
    out = io.StringIO()
    final = backingup.follow(lambda: next(looks), out=out, tty=False, sleep=lambda _s: None)
    assert final == {"phase": "Succeeded"}
    lines = out.getvalue().splitlines()
    assert lines[0] == "phase Pending"
    assert lines[1] == "  waiting: MigrationInProgress: Migration m runs"
    assert lines[2] == "phase Running"
    assert lines[3].endswith(" 50%  0/0 MiB")
    assert lines[4] == "phase Succeeded"


@pytest.mark.parametrize(
    ("conds", "verdict"),
    [
        ([], None),
        ([{"type": "Ready", "status": "False", "reason": "Stopped"}], None),
        ([{"type": "Restored", "status": "False", "reason": "VMNotStopped", "message": "stop"}],
         ("VMNotStopped", "stop")),
        ([{"type": "Restored", "status": "True", "reason": "Succeeded", "message": "done"}],
         ("Succeeded", "done")),
    ],
)  # fmt: skip
def test_restored_verdict(conds: list[dict[str, str]], verdict: tuple[str, str] | None) -> None:
    assert backingup.restored_verdict({"conditions": conds}) == verdict
    if verdict is not None:
        assert (verdict[0] in backingup.REFUSED) is (verdict[0] == "VMNotStopped")
