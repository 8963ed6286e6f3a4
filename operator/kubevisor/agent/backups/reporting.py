"""What the agent reports on a VMBackup: its own status fields, applied whole.

The agent's fields (``agent``, times, ``progress``, ``disks``, ``sizeBytes``,
``checkpoint``, ``directory``) are applied with server-side apply under the agent's field
manager; each apply sends all of them, so :class:`Own` keeps them as last applied. Both
drive roles (:mod:`.pushing` live, :mod:`.converting` offline) and the loop
(:mod:`.handling`) report through here.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from kubevisor.api import vmbackups


def now() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass
class Own:
    """The agent's fields as last applied (SSA: each apply sends all of them)."""

    report: vmbackups.AgentReport | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    progress: vmbackups.BackupProgress | None = None
    disks: list[vmbackups.BackupDisk] = dataclasses.field(default_factory=list)
    size_bytes: int | None = None
    checkpoint: str | None = None
    directory: str | None = None

    @classmethod
    def of(cls, st: vmbackups.VMBackupStatus | None) -> Own:
        if st is None:
            return cls()
        return cls(
            report=st.agent,
            started_at=st.started_at,
            completed_at=st.completed_at,
            progress=st.progress,
            disks=list(st.disks),
            size_bytes=st.size_bytes,
            checkpoint=st.checkpoint,
            directory=st.directory,
        )

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.report is not None:
            out["agent"] = self.report.model_dump(mode="json", by_alias=True, exclude_none=True)
        if self.started_at is not None:
            out["startedAt"] = self.started_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.completed_at is not None:
            out["completedAt"] = self.completed_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            if self.started_at is not None:
                ms = int((self.completed_at - self.started_at).total_seconds() * 1000)
                out["durationMs"] = max(ms, 0)
        if self.progress is not None:
            out["progress"] = self.progress.model_dump(
                mode="json", by_alias=True, exclude_none=True
            )
        if self.disks:
            out["disks"] = [
                d.model_dump(mode="json", by_alias=True, exclude_none=True) for d in self.disks
            ]
        if self.size_bytes is not None:
            out["sizeBytes"] = self.size_bytes
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint
        if self.directory is not None:
            out["directory"] = self.directory
        return out


def progress(done: int, total: int | None) -> vmbackups.BackupProgress:
    percent = min(100, done * 100 // total) if total else None
    return vmbackups.BackupProgress(
        done_bytes=done, total_bytes=total, percent=percent, updated_at=now()
    )
