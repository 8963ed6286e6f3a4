"""VMTemplate handlers: report whether a template is usable, and wake the VMs using it.

A template change never edits a running VM: the VMs re-resolve, and a running one
reports RestartRequired (see ``vmphases.record_machine``). A VM waiting for a template
that did not exist is placed as soon as the template appears.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf
import pydantic

from kubevisor.api import conditions, groups, kinds, machines, vmtemplates
from kubevisor.api.conditions import ConditionType, Reason
from kubevisor.controller import vms


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


@kopf.on.event(groups.GROUP, groups.VERSION, kinds.VMTEMPLATE.plural)
async def template_event(
    type: str,
    name: str,
    namespace: str | None,
    body: kopf.Body,
    **_: Any,
) -> None:
    """Report the template's status (once per generation), then wake its VMs."""
    assert namespace is not None  # VMTemplates are namespaced
    if type != "DELETED":
        current = dict(body.get("status") or {})
        generation = int(body.get("metadata", {}).get("generation") or 0)
        if current.get("observedGeneration") != generation:
            status = template_status(
                dict(body.get("spec") or {}), current, generation=generation, now=datetime.now(UTC)
            )
            await vms.api().apply_status(
                kinds.VMTEMPLATE.plural, kinds.VMTEMPLATE.kind, namespace, name, status
            )
    vms.template_changed(namespace, name)
