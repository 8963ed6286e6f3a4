"""The VMBackup contract's pure rules: where files go, who goes first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pydantic
import pytest

from kubevisor.api import vmbackups

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ROOTS: dict[str, str | None] = {"local": "/var/lib/kv", "shared": "/mnt/shared"}


@pytest.mark.parametrize(
    ("path", "storage", "roots", "expected"),
    [
        ("/nas/backups", "shared", ROOTS, "/nas/backups"),
        ("/nas/backups/", "local", ROOTS, "/nas/backups"),
        ("tiny/nightly", "shared", ROOTS, "/mnt/shared/backups/tiny/nightly"),
        ("tiny", "local", ROOTS, "/var/lib/kv/backups/tiny"),
        (None, "shared", ROOTS, "/mnt/shared/backups"),
        ("tiny", "shared", {"local": "/var/lib/kv", "shared": None}, None),
    ],
)
def test_target_dir(
    path: str | None, storage: str, roots: dict[str, str | None], expected: str | None
) -> None:
    target = vmbackups.BackupTarget.model_validate({"path": path, "storage": storage})
    assert vmbackups.target_dir(target, roots=roots) == expected


def test_target_path_may_not_climb() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"must not contain '\.\.'"):
        vmbackups.BackupTarget(path="a/../../etc")


def test_staging_and_final_dirs_are_siblings_so_rename_is_atomic() -> None:
    final = vmbackups.backup_dir("/nas", "default", "b1")
    staging = vmbackups.staging_dir("/nas", "default", "b1")
    assert final == "/nas/default/b1"
    assert staging == "/nas/default/.b1.partial"
    assert vmbackups.disk_file(final, "root") == "/nas/default/b1/root.qcow2"


def turn(kind: str, name: str, seconds: int, *, active: bool = False) -> vmbackups.Turn:
    return vmbackups.Turn(kind, name, T0 + timedelta(seconds=seconds), active)


@pytest.mark.parametrize(
    ("me", "others", "expected"),
    [
        (turn("VMBackup", "b", 5), [], None),
        # an older migration goes first, a younger one waits for us
        (turn("VMBackup", "b", 5), [turn("Migration", "m", 1)], "m"),
        (turn("VMBackup", "b", 5), [turn("Migration", "m", 9)], None),
        (turn("Migration", "m", 9), [turn("VMBackup", "b", 5)], "b"),
        # an active one keeps its turn even if younger
        (turn("VMBackup", "b", 1), [turn("Migration", "m", 9, active=True)], "m"),
        # already active: never waits
        (turn("VMBackup", "b", 9, active=True), [turn("Migration", "m", 1)], None),
        # itself in the list is ignored; same instant: kind then name decides
        (turn("VMBackup", "b", 5), [turn("VMBackup", "b", 5)], None),
        (turn("VMBackup", "b", 5), [turn("Migration", "m", 5)], "m"),
        (turn("Migration", "m", 5), [turn("VMBackup", "b", 5)], None),
    ],
)
def test_waits_for(me: vmbackups.Turn, others: list[vmbackups.Turn], expected: str | None) -> None:
    got = vmbackups.waits_for(me, others)
    assert (got.name if got else None) == expected


def test_two_sides_never_both_start() -> None:
    a, b = turn("VMBackup", "b", 3), turn("Migration", "m", 3)
    assert (vmbackups.waits_for(a, [b]) is None) != (vmbackups.waits_for(b, [a]) is None)


def test_spec_defaults_and_wire_names() -> None:
    spec = vmbackups.VMBackupSpec.model_validate({"vmName": "tiny"})
    assert spec.mode is vmbackups.BackupMode.FULL
    assert spec.target.storage == "shared"
    assert not spec.quiesce
    status = vmbackups.VMBackupStatus(
        chain=vmbackups.BackupChain(full="b0", previous="b1", length=3),
        progress=vmbackups.BackupProgress(done_bytes=5, total_bytes=10, percent=50),
    )
    wire = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert wire["chain"] == {"full": "b0", "previous": "b1", "length": 3}
    assert wire["progress"] == {"doneBytes": 5, "totalBytes": 10, "percent": 50}


def _cond(type_: str, status: str, reason: str) -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason}


META = {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, (True, False)),
        ({"phase": "Running"}, (True, True)),
        ({"phase": "Succeeded"}, (False, False)),
        ({"phase": "Pending", "conditions": [_cond("Ready", "False", "MigrationInProgress")]},
         (True, False)),
        # refused for another reason: does not hold up a migration forever
        ({"phase": "Pending", "conditions": [_cond("Ready", "False", "NoPreviousBackup")]},
         (False, False)),
    ],
)  # fmt: skip
def test_backup_turn(status: dict[str, object], expected: tuple[bool, bool]) -> None:
    obj = {"metadata": META, "spec": {"vmName": "tiny"}, "status": status}
    turn = vmbackups.backup_turn(obj, "tiny")
    assert (turn is not None, bool(turn and turn.active)) == expected
    assert vmbackups.backup_turn(obj, "other-vm") is None


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, (True, False)),
        ({"phase": "Running"}, (True, True)),
        ({"phase": "Scheduling"}, (True, True)),
        ({"phase": "Cancelled"}, (False, False)),
        ({"phase": "Pending", "conditions": [_cond("Scheduled", "False", "ClusterLimitReached")]},
         (True, False)),
        ({"phase": "Pending", "conditions": [_cond("Scheduled", "False", "NoTargetFits")]},
         (False, False)),
    ],
)  # fmt: skip
def test_migration_turn(status: dict[str, object], expected: tuple[bool, bool]) -> None:
    obj = {"metadata": META, "spec": {"vmName": "tiny"}, "status": status}
    turn = vmbackups.migration_turn(obj, "tiny")
    assert (turn is not None, bool(turn and turn.active)) == expected
