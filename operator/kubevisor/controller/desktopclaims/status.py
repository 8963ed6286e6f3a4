"""The status fields the controller owns on a DesktopClaim, from one binding decision
(pure). ``status.session`` belongs to the display gateway and is never written here.

The gateway admits a token only while ``phase == Bound`` and ``vmName`` is set, so both
are written together, and only for a claim whose desktop runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from kubevisor.api import conditions
from kubevisor.api.conditions import ConditionType
from kubevisor.api.desktopclaims import BOUND, DesktopClaimPhase
from kubevisor.controller.desktopclaims import tokens
from kubevisor.controller.desktopclaims.binding import ClaimDecision, State

#: The status fields this module writes (server-side apply owns exactly these).
OWNED: Final = (
    "phase",
    "vmName",
    "url",
    "viewUrl",
    "tokenExpiresAt",
    "boundAt",
    "releasedAt",
    "conditions",
    "observedGeneration",
)

PHASES: Final = {
    State.BOUND: DesktopClaimPhase.BOUND,
    State.STARTING: DesktopClaimPhase.PENDING,
    State.WAITING: DesktopClaimPhase.PENDING,
    State.REFUSED: DesktopClaimPhase.FAILED,
    State.RELEASED: DesktopClaimPhase.RELEASED,
    State.FINALIZE: DesktopClaimPhase.RELEASED,
}


def shown(current: Mapping[str, Any]) -> tokens.Shown:
    """The token fields ``current`` (a claim's status) shows."""
    expires = current.get("tokenExpiresAt")
    return tokens.Shown(
        vm_name=current.get("vmName"),
        url=current.get("url"),
        view_url=current.get("viewUrl"),
        expires_at=datetime.fromisoformat(expires) if isinstance(expires, str) else None,
    )


def build(
    current: Mapping[str, Any],
    d: ClaimDecision,
    *,
    generation: int | None,
    now: datetime,
    minted: tokens.Minted | None,
) -> dict[str, Any]:
    """The owned fields for decision ``d``; ``minted``: fresh URLs (None keeps the
    ones shown, for a Bound claim whose tokens are still good)."""
    phase = PHASES[d.state]
    bound = d.state is State.BOUND
    listed: list[dict[str, Any]] = list(current.get("conditions") or [])
    for type_ in (BOUND, ConditionType.READY):
        listed = conditions.set_condition(
            listed,
            type=type_,
            status="True" if bound else "False",
            reason=d.reason,
            message=d.message,
            generation=generation,
            now=now,
        )
    out: dict[str, Any] = {
        "phase": phase.value,
        "conditions": [c for c in listed if c.get("type") in (BOUND, ConditionType.READY)],
    }
    if generation is not None:
        out["observedGeneration"] = generation
    if d.desktop is not None and d.state in (State.BOUND, State.STARTING):
        out["vmName"] = d.desktop
    if bound:
        same = (
            current.get("phase") == DesktopClaimPhase.BOUND and current.get("vmName") == d.desktop
        )
        out["boundAt"] = (current.get("boundAt") if same else None) or conditions.format_time(now)
        if minted is not None:
            out["url"] = minted.url
            if minted.view_url is not None:
                out["viewUrl"] = minted.view_url
            out["tokenExpiresAt"] = conditions.format_time(minted.expires_at)
        else:
            for field in ("url", "viewUrl", "tokenExpiresAt"):
                if current.get(field) is not None:
                    out[field] = current[field]
    if d.state is State.RELEASED:
        out["releasedAt"] = current.get("releasedAt") or conditions.format_time(now)
    return out


def same(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Nothing to write: every owned field already shows what ``wanted`` says."""
    return all(current.get(k) == wanted.get(k) for k in OWNED)
