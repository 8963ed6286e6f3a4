"""One admission: token → verified grant → facts from the API server → decision → replay
check. The only stateful part is the nonce ledger; the decisions are
:mod:`kubevisor.api.displaytokens` and :mod:`gateway.admitting`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from kubevisor.api import displaytokens
from kubevisor.gateway import admitting, replays


class Facts(Protocol):
    """What admission reads through the API server (``gateway.kube.reading.Reader``)."""

    async def key(self) -> bytes: ...
    async def claim(self, namespace: str, name: str) -> admitting.ClaimFacts | None: ...
    async def display(self, namespace: str, vm_name: str) -> admitting.DisplayFacts | None: ...
    async def application(self, namespace: str, pool: str) -> str | None: ...
    async def server(
        self, namespace: str, vm_name: str, application: str
    ) -> admitting.DisplayFacts | None: ...


class Admitter:
    """Admits tokens, each nonce once."""

    def __init__(self, facts: Facts, *, clock: Callable[[], float] = time.time) -> None:
        self.facts = facts
        self._clock = clock
        self.ledger = replays.NonceLedger()

    async def admit(
        self, token: str | None, *, consume: bool = True
    ) -> tuple[displaytokens.Grant | None, admitting.Target | admitting.Refused]:
        """The grant (when the token verified) and the decision. ``consume=False`` only
        asks: the nonce is checked but not recorded (``/admission``, the page's "why")."""
        if not token:
            return None, admitting.Refused(
                admitting.Refusal.MISSING_TOKEN,
                f"no {displaytokens.TOKEN_QUERY!r} query parameter",
            )
        key = await self.facts.key()
        try:
            grant = displaytokens.verify(key, token, now=self._clock())
        except displaytokens.TokenRefused as exc:
            return None, admitting.Refused(admitting.Refusal(exc.reason.value), str(exc))
        claim = await self.facts.claim(grant.namespace, grant.claim)
        display = None
        if claim is not None and claim.vm_name:
            application = None
            if claim.pool is not None:
                application = await self.facts.application(grant.namespace, claim.pool)
            if application is not None:
                display = await self.facts.server(grant.namespace, claim.vm_name, application)
            else:
                display = await self.facts.display(grant.namespace, claim.vm_name)
        decision = admitting.decide(grant, claim, display)
        if isinstance(decision, admitting.Refused):
            return grant, decision
        now = self._clock()
        if consume:
            fresh = self.ledger.use(grant.nonce, expires_at=grant.expires_at, now=now)
        else:
            fresh = not self.ledger.seen(grant.nonce, now=now)
        if not fresh:
            return grant, admitting.Refused(
                admitting.Refusal.REPLAYED, "the token was already used (each admits one session)"
            )
        return grant, decision

    async def still_standing(
        self, grant: displaytokens.Grant, target: admitting.Target
    ) -> admitting.Refused | None:
        """Why a running session must end now (its claim ended or moved to another VM),
        or None."""
        claim = await self.facts.claim(grant.namespace, grant.claim)
        standing = admitting.claim_standing(grant, claim)
        if isinstance(standing, admitting.Refused):
            return standing
        if standing != target.vm_name:
            return admitting.Refused(
                admitting.Refusal.CLAIM_NOT_BOUND,
                f"DesktopClaim {grant.namespace}/{grant.claim} is now bound to {standing}",
            )
        return None
