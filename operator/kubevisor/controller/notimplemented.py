"""Handlers for kinds whose logic is not built yet: say so in status, once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from kubevisor.api import conditions, groups, kinds


def status_patch(kind: kinds.Kind, status: dict[str, Any], generation: int) -> dict[str, Any]:
    """The status a not-yet-built kind reports: ``Ready=False``, reason ``NotImplemented``."""
    updated = conditions.set_condition(
        list(status.get("conditions") or []),
        type=conditions.ConditionType.READY,
        status="False",
        reason=conditions.Reason.NOT_IMPLEMENTED,
        message=f"kubevisor does not act on {kind.kind} objects yet; nothing was done.",
        generation=generation,
        now=datetime.now(UTC),
    )
    return {"conditions": updated, "observedGeneration": generation}


def register(kind: kinds.Kind) -> None:
    """Answer create/resume/update of ``kind`` with the NotImplemented condition."""

    def report(**kwargs: Any) -> None:
        status: dict[str, Any] = dict(kwargs["status"])
        meta: dict[str, Any] = dict(kwargs["meta"])
        patch: kopf.Patch = kwargs["patch"]
        generation = int(meta.get("generation") or 0)
        if status.get("observedGeneration") == generation:
            return
        patch.status.update(status_patch(kind, dict(status), generation))

    for decorator in (kopf.on.create, kopf.on.resume, kopf.on.update):
        decorator(groups.GROUP, groups.VERSION, kind.plural, id=f"notimplemented-{kind.plural}")(
            report
        )
