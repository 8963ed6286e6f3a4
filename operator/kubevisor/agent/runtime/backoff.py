"""Capped exponential backoff: the kubelet's CrashLoopBackOff shape (10 s doubling to 5 min).

Why here: every role's work loop (VMs, VRFs) and the informer retry through this one
schedule, so a refused object is retried at 10, 20, 40, … 300 s, never in a storm. The
count of one key resets when what the pass acts on changes (its fingerprint: for a VM the
spec and status.machine) or when the pass succeeds (for a VM: it reaches Running).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

FIRST = 10.0
"""Seconds before the first retry."""
CAP = 300.0
"""The longest wait between retries."""


def delay(failures: int, *, first: float = FIRST, cap: float = CAP) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (1-based; pure)."""
    if failures < 1:
        return 0.0
    return min(first * 2.0 ** min(failures - 1, 64), cap)


@dataclasses.dataclass
class Entry:
    failures: int
    fingerprint: Hashable
    due: float


class Backoff(Generic[K]):
    """Per-key failure counts and the time each key may next be tried."""

    def __init__(self, *, first: float = FIRST, cap: float = CAP) -> None:
        self.first = first
        self.cap = cap
        self.entries: dict[K, Entry] = {}

    def fail(self, key: K, fingerprint: Hashable, now: float) -> float:
        """Record a failure of ``key``; the seconds until it may be tried again. A new
        fingerprint starts the count afresh."""
        entry = self.entries.get(key)
        failures = 1 if entry is None or entry.fingerprint != fingerprint else entry.failures + 1
        wait = delay(failures, first=self.first, cap=self.cap)
        self.entries[key] = Entry(failures, fingerprint, now + wait)
        return wait

    def holding(self, key: K, fingerprint: Hashable, now: float) -> bool:
        """Whether ``key`` is still waiting out its backoff (same fingerprint, not due);
        a changed fingerprint resets the key."""
        entry = self.entries.get(key)
        if entry is None:
            return False
        if entry.fingerprint != fingerprint:
            del self.entries[key]
            return False
        return now < entry.due

    def failures(self, key: K) -> int:
        entry = self.entries.get(key)
        return 0 if entry is None else entry.failures

    def reset(self, key: K) -> None:
        self.entries.pop(key, None)
