"""Replay bookkeeping: each token's nonce admits one websocket (pure, clock passed in).

A nonce is remembered until its token expires; after that the token is refused as
expired anyway, so the ledger forgets it and stays as small as the set of live tokens.
The ledger lives in one gateway process (see docs/gateway.md on replicas).
"""

from __future__ import annotations

import heapq


class NonceLedger:
    """Nonces already used, each kept until its token's expiry."""

    def __init__(self) -> None:
        self._used: dict[str, int] = {}
        self._expiries: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._used)

    def use(self, nonce: str, *, expires_at: int, now: float) -> bool:
        """Record ``nonce`` as used; False if it was used before (a replay).

        Check and record are one step with no await, so two concurrent browsers with the
        same token cannot both pass.
        """
        self._forget(now)
        if nonce in self._used:
            return False
        self._used[nonce] = expires_at
        heapq.heappush(self._expiries, (expires_at, nonce))
        return True

    def seen(self, nonce: str, *, now: float) -> bool:
        """Whether ``nonce`` was used (a peek that records nothing: the page asking why
        its websocket was refused must not burn a token)."""
        self._forget(now)
        return nonce in self._used

    def _forget(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            _, nonce = heapq.heappop(self._expiries)
            self._used.pop(nonce, None)
