"""The status the controller writes on a DesktopPool: counts, the desktops, phase and a
Ready condition that says why the pool is short (pure).

"Short" means fewer running desktops than the target: the condition's reason is the
reason the first not-running desktop's VM gives (e.g. ``Unschedulable`` when no node
fits, ``TemplateNotFound``), its message lists the desktops and their VMs' sentences, so
``kubectl describe dpool`` answers "why is nobody getting a desktop" without reading the
VMs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from kubevisor.api import conditions
from kubevisor.api.conditions import ConditionType, Reason
from kubevisor.api.desktoppools import APPLICATION, Desktop, DesktopPoolPhase, DesktopPoolSpec
from kubevisor.controller.desktoppools import sizing

OWNED: Final = (
    "phase",
    "ready",
    "claimed",
    "spare",
    "total",
    "waiting",
    "desktops",
    "conditions",
    "observedGeneration",
)
#: Reasons the pool gives for not-running desktops that point at a lasting problem.
DEGRADING: Final = frozenset(
    {
        Reason.UNSCHEDULABLE,
        Reason.TEMPLATE_NOT_FOUND,
        Reason.IMAGE_NOT_FOUND,
        Reason.FAILED,
        Reason.HYPERVISOR_REFUSED,
        Reason.INVALID_SPEC,
    }
)
SCALING: Final = "Scaling"
_REASON = re.compile(conditions.REASON_PATTERN)


def _reason_of(d: Desktop) -> str:
    head = (d.reason or "").split(":", 1)[0].strip()
    return head if head and _REASON.match(head) else SCALING


def build(
    current: Mapping[str, Any],
    spec: DesktopPoolSpec,
    desktops: Sequence[Desktop],
    plan: sizing.Plan,
    *,
    waiting: int,
    generation: int | None,
    now: datetime,
    problem: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The owned fields; ``problem`` (reason, sentence) overrides the Ready condition
    when the pool itself cannot act (its template is missing)."""
    live = [d for d in desktops if not d.deleting]
    ready = [d for d in live if d.ready]
    claimed = [d for d in live if d.claim is not None]
    spare = [d for d in ready if not sizing.held(spec, d)]
    short = [d for d in live if not d.ready]
    if problem is not None:
        phase, ok, (reason, message) = DesktopPoolPhase.FAILED, False, problem
    elif short or len(live) < plan.target:
        reasons = [_reason_of(d) for d in short]
        reason = next((r for r in reasons if r != SCALING), SCALING)
        degraded = reason in DEGRADING
        phase = DesktopPoolPhase.DEGRADED if degraded else DesktopPoolPhase.SCALING
        ok = False
        listed = "; ".join(f"{d.name}: {d.reason or d.phase or 'Pending'}" for d in short[:5])
        more = f" (and {len(short) - 5} more)" if len(short) > 5 else ""
        message = f"{len(ready)} of {plan.target} desktops running" + (
            f"; not running: {listed}{more}" if short else ""
        )
    else:
        phase, ok, reason = DesktopPoolPhase.READY, True, Reason.AS_EXPECTED
        message = f"{len(ready)} desktops running, {len(claimed)} claimed, {len(spare)} spare"
        if spec.mode == APPLICATION:
            message = f"{len(ready)} application servers running, " + ", ".join(
                f"{d.name}: {d.sessions} session(s)" for d in ready[:10]
            )
    if waiting and len(live) >= spec.max and problem is None:
        message += f"; {waiting} claim(s) wait: the pool is at its max of {spec.max}"
    listed_conds = conditions.set_condition(
        list(current.get("conditions") or []),
        type=ConditionType.READY,
        status="True" if ok else "False",
        reason=reason,
        message=message,
        generation=generation,
        now=now,
    )
    out: dict[str, Any] = {
        "phase": phase.value,
        "ready": len(ready),
        "claimed": len(claimed),
        "spare": len(spare),
        "total": len(live),
        "waiting": waiting,
        "desktops": [_entry(d, application=spec.mode == APPLICATION) for d in live],
        "conditions": [c for c in listed_conds if c.get("type") == ConditionType.READY],
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def _entry(d: Desktop, *, application: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": d.name}
    for key, value in (
        ("phase", d.phase),
        ("claim", d.claim),
        ("user", d.user),
        ("nodeName", d.node),
        ("reason", d.reason),
    ):
        if value is not None:
            out[key] = value
    if application:
        out["sessions"] = d.sessions
    return out


def same(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Nothing to write."""
    return all(current.get(k) == wanted.get(k) for k in OWNED)
