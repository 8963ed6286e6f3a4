"""The agents' Migration status fields as server-side-apply bodies, pure.

Each role applies all of its own fields every time (SSA drops what a manager stops
sending): the source ``SOURCE_FIELDS``, the target ``TARGET_FIELDS``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubevisor.agent.libvirt import migrating
from kubevisor.api import common, migrations


def _dump(model: common.Model) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def _figures(outcome: migrating.Outcome | None) -> dict[str, Any]:
    if outcome is None:
        return {}
    values = (outcome.total_time_ms, outcome.downtime_ms, outcome.bytes_transferred)
    return {k: v for k, v in zip(migrations.FIGURE_FIELDS, values, strict=True) if v is not None}


def source_fields(
    report: migrations.SourceReport,
    *,
    started_at: datetime | None = None,
    progress: migrations.MigrationProgress | None = None,
    mode: migrations.MigrationMode | None = None,
    outcome: migrating.Outcome | None = None,
) -> dict[str, Any]:
    """The source agent's status fields (a subset of ``SOURCE_FIELDS``, plus the
    ``FIGURE_FIELDS`` after post-copy) (pure)."""
    own: dict[str, Any] = {"source": _dump(report), **_figures(outcome)}
    if started_at is not None:
        own["startedAt"] = migrations.MigrationStatus(started_at=started_at).model_dump(
            mode="json", by_alias=True
        )["startedAt"]
    if progress is not None:
        own["progress"] = _dump(progress)
    if mode is not None:
        own["mode"] = mode.value
    return own


def target_fields(
    report: migrations.TargetReport, *, outcome: migrating.Outcome | None = None
) -> dict[str, Any]:
    """The target agent's status fields (a subset of ``TARGET_FIELDS``) (pure): its
    report and, once the domain runs here, the completed job's figures (libvirt keeps
    them on the destination only)."""
    return {"target": _dump(report), **_figures(outcome)}
