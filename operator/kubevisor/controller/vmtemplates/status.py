"""The status a VMTemplate reports: whether it is usable as a machine. Pure."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pydantic

from kubevisor.api import conditions, machines, vmtemplates
from kubevisor.api.conditions import ConditionType, Reason


def template_status(
    spec: dict[str, Any], current: dict[str, Any], *, generation: int, now: datetime
) -> dict[str, Any]:
    """Ready when the spec parses as a full machine, Failed with the reason otherwise."""
    try:
        machines.MachineSpec.model_validate(spec)
    except pydantic.ValidationError as exc:
        phase, status, reason = vmtemplates.VMTemplatePhase.FAILED, "False", Reason.INVALID_SPEC
        message = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()
        )
    else:
        phase, status, reason, message = (
            vmtemplates.VMTemplatePhase.READY,
            "True",
            Reason.AS_EXPECTED,
            "",
        )
    listed = conditions.set_condition(
        list(current.get("conditions") or []),
        type=ConditionType.READY,
        status=status,  # type: ignore[arg-type]
        reason=reason,
        message=message,
        generation=generation,
        now=now,
    )
    return {
        "phase": phase.value,
        "observedGeneration": generation,
        "conditions": [c for c in listed if c["type"] == ConditionType.READY],
    }
