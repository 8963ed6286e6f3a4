"""Handlers for kinds whose logic is not built yet: say so in status, once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kubevisor.api import conditions, kinds
from kubevisor.controller.kube import operating


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


def handler(kind: kinds.Kind) -> operating.OnChange:
    """Answer create/resume/update of ``kind`` with the NotImplemented condition."""

    def report(meta: dict[str, Any], status: dict[str, Any]) -> dict[str, Any] | None:
        generation = int(meta.get("generation") or 0)
        if status.get("observedGeneration") == generation:
            return None
        return status_patch(kind, status, generation)

    return operating.OnChange(kind.plural, f"notimplemented-{kind.plural}", report)
