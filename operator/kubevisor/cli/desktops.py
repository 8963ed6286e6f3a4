"""``kubevisor desktop claim POOL --user U``: ask a pool for a desktop and print its URL.

An ordinary API write the controller reacts to: the CLI creates a DesktopClaim
(``generateName: <pool>-``), waits until the claim is Bound and prints ``status.url``
(and ``status.viewUrl`` with ``--shadow``). A claim the pool refuses (NotAllowed) ends
the command with the controller's sentence; one that waits (PoolExhausted,
UserLimitReached, WaitingForDesktop) prints why once per change and keeps waiting until
``--timeout``, then leaves the claim in place (it binds later) and says so.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from kubevisor.api import groups, kinds
from kubevisor.api.desktopclaims import BOUND, DesktopClaimPhase
from kubevisor.cli import rendering


class ClaimFailed(Exception):
    """The claim will not be bound (refused, or released)."""


def claim_body(
    pool: str, user: str, *, groups_: list[str], shadow: bool, name: str | None
) -> dict[str, Any]:
    """The DesktopClaim to create (pure)."""
    meta: dict[str, Any] = {"name": name} if name else {"generateName": f"{pool}-"}
    spec: dict[str, Any] = {"poolRef": {"name": pool}, "user": user}
    if groups_:
        spec["groups"] = groups_
    if shadow:
        spec["allowShadowing"] = True
    return {
        "apiVersion": groups.API_VERSION,
        "kind": kinds.DESKTOPCLAIM.kind,
        "metadata": meta,
        "spec": spec,
    }


def outcome(status: Mapping[str, Any]) -> tuple[str, str] | None:
    """("bound", url), ("failed", why), ("waiting", why) or None (nothing said yet); pure."""
    phase = status.get("phase")
    cond = next((c for c in status.get("conditions") or [] if c.get("type") == BOUND), None)
    why = f"{cond.get('reason')}: {cond.get('message')}" if cond else ""
    if phase == DesktopClaimPhase.BOUND and status.get("url"):
        return "bound", str(status["url"])
    if phase in (DesktopClaimPhase.FAILED, DesktopClaimPhase.RELEASED):
        return "failed", why or str(phase)
    if cond is not None:
        return "waiting", why
    return None


def claim(
    api: Any,
    pool: str,
    namespace: str,
    *,
    user: str,
    groups_: list[str],
    shadow: bool,
    name: str | None,
    timeout: float,
    out: TextIO = sys.stderr,
) -> rendering.Done:
    """Create the claim, wait for it (progress on ``out``); the bound claim and the
    URL lines."""
    plural = kinds.DESKTOPCLAIM.plural
    body = claim_body(pool, user, groups_=groups_, shadow=shadow, name=name)
    created = api.create_namespaced_custom_object(
        groups.GROUP, groups.VERSION, namespace, plural, body
    )
    claim_name = created["metadata"]["name"]
    print(f"desktopclaim/{claim_name} created", file=out)
    deadline = time.monotonic() + timeout
    said = ""
    while True:
        obj = api.get_namespaced_custom_object(
            groups.GROUP, groups.VERSION, namespace, plural, claim_name
        )
        st = obj.get("status") or {}
        seen = outcome(st)
        if seen is not None and seen[0] == "bound":
            lines = [seen[1]]
            if st.get("viewUrl"):
                lines.append(f"view-only: {st['viewUrl']}")
            lines.append(f"desktop {st.get('vmName')}; the URL admits a new connection until "
                         f"{st.get('tokenExpiresAt')}")  # fmt: skip
            return rendering.Done(obj, "\n".join(lines))
        if seen is not None and seen[0] == "failed":
            raise ClaimFailed(f"desktopclaim/{claim_name}: {seen[1]}")
        if seen is not None and seen[1] != said:
            said = seen[1]
            print(f"waiting: {said}", file=out)
        if time.monotonic() > deadline:
            raise ClaimFailed(
                f"desktopclaim/{claim_name} not bound after {timeout:.0f} s "
                f"({said or 'no status'}); it stays and binds when a desktop frees up"
            )
        time.sleep(0.5)
