"""The backup's files on a real file system (tmp_path): staging, commit, removal."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubevisor.agent.backups import copying
from kubevisor.api import vmbackups

pytestmark = pytest.mark.unit


def test_a_missing_absolute_target_is_not_created(tmp_path: Path) -> None:
    target = tmp_path / "nas"
    with pytest.raises(copying.CopyError) as err:
        copying.prepare_staging(target, target / "ns" / ".b.partial", create_target=False)
    assert err.value.reason == vmbackups.BackupReason.TARGET_UNAVAILABLE
    assert str(target) in str(err.value)
    assert not target.exists()


def test_a_relative_target_is_created_and_stale_staging_replaced(tmp_path: Path) -> None:
    target = tmp_path / "backups" / "nightly"
    staging = target / "ns" / ".b.partial"
    copying.prepare_staging(target, staging, create_target=True)
    (staging / "root.qcow2").write_bytes(b"half")
    copying.prepare_staging(target, staging, create_target=True)
    assert staging.is_dir() and not any(staging.iterdir())


def test_commit_renames_with_the_manifest_and_never_overwrites(tmp_path: Path) -> None:
    staging, final = tmp_path / ".b.partial", tmp_path / "b"
    staging.mkdir()
    (staging / "root.qcow2").write_bytes(b"disk")
    copying.commit(staging, final, {"name": "b"})
    assert not staging.exists()
    assert (final / "root.qcow2").read_bytes() == b"disk"
    assert copying.read_manifest(final) == {"name": "b"}
    # a second attempt never replaces a complete backup
    staging.mkdir()
    (staging / "root.qcow2").write_bytes(b"other")
    with pytest.raises(copying.CopyError):
        copying.commit(staging, final, {"name": "b"})
    assert (final / "root.qcow2").read_bytes() == b"disk"


def test_incomplete_directory_has_no_manifest(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    assert copying.read_manifest(tmp_path / "b") is None
    assert copying.read_manifest(tmp_path / "missing") is None


def test_removal_takes_only_the_backups_own_files(tmp_path: Path) -> None:
    final = tmp_path / "b"
    final.mkdir()
    for name in ("root.qcow2", "data.qcow2", copying.MANIFEST, "someone-elses.txt"):
        (final / name).write_text("x")
    removed = copying.remove_backup(final, ["root", "data"])
    assert sorted(p.name for p in removed) == sorted(["root.qcow2", "data.qcow2", "backup.json"])
    assert [p.name for p in final.iterdir()] == ["someone-elses.txt"]
    (final / "someone-elses.txt").unlink()
    copying.remove_backup(final, ["root"])
    assert not final.exists()


async def test_size_and_sha256(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    assert await copying.size_and_sha256(f) == (
        3,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    )
