"""The placement ledger: which VM takes what on which node, kept in controller memory.

Placement needs the capacity used per node. Listing every VM for each placement made
placement O(N) and, under the placement lock, O(N²) for a burst of N VMs. The ledger
holds the same sum incrementally instead:

- primed with a full list before the first placement (``resync``), so a restarted
  controller counts what earlier runs placed and never double-books;
- kept current from the VM watch events kopf delivers anyway (``observe``, ``forget``);
- updated by placement itself (``reserve``) before the status write, so the next
  placement counts this VM even though its event has not arrived yet; the write then
  ``confirm``s (or ``release``s on failure) the reservation.

Ordering. Events and lists can arrive late relative to our own writes: the event of an
earlier edit of a VM (no ``nodeName`` yet) may be handled after we reserved a node for
it, and a list taken before a write may be merged after it. Two rules keep the ledger
from going backwards:

- a *pending* reservation (written, or being written, by us) is not erased by an
  observation without ``nodeName``: such an observation predates our write, because
  ``nodeName`` is never cleared once set (docs/architecture.md);
- otherwise an observation replaces the entry only if its ``resourceVersion`` is not
  older. Resource versions are compared as integers (what etcd-backed API servers
  hand out); one that is not an integer is taken as newer, which is what the watch
  order gives anyway.

Deleted VMs leave a tombstone so a list taken before the deletion does not bring them
back. Pure: no I/O, no clock; ``reserving.Placer`` feeds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from kubevisor.api import machines, migrations, nodeloss
from kubevisor.api.virtualmachines import DesiredState
from kubevisor.controller.placement import placing

NOTHING = placing.Usage()


@dataclass(frozen=True)
class Seen:
    """What one version of a VM says about its placement."""

    uid: str
    node: str | None
    usage: placing.Usage
    """What it takes on ``node``: zero when it does not count (stopped, no machine)."""
    rv: int | None = None
    """``metadata.resourceVersion`` as an integer; None when unknown or not numeric."""
    also: str | None = None
    """The target node of an active migration (``status.migration``): the VM counts
    there too until the migration ends."""


@dataclass(frozen=True)
class Entry:
    """The ledger's belief about one VM."""

    node: str | None
    usage: placing.Usage
    rv: int | None
    pending: bool
    """Reserved by a placement whose status write has not been confirmed yet."""
    also: str | None = None
    """A migration target the VM also counts on (``Seen.also``)."""

    def nodes(self) -> tuple[str, ...]:
        """Every node the VM's usage counts on."""
        both = (self.node, self.also if self.also != self.node else None)
        return tuple(n for n in both if n is not None)


def resource_version(value: Any) -> int | None:
    """An integer resourceVersion, or None when absent or opaque."""
    try:
        return int(str(value))
    except ValueError:
        return None


def seen(obj: Mapping[str, Any]) -> Seen:
    """The placement facts of a raw VirtualMachine (as the API server returns it).

    A VM counts on its node when it has ``status.nodeName`` and a valid
    ``status.machine`` and its desired state is not Stopped (a stopped VM keeps its node
    but frees the capacity, as before). A VM the node-loss pass chose a new node for
    counts there already (``nodeloss.recovered_to``), before its ``nodeName`` moves.
    """
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    node = nodeloss.recovered_to(status) or status.get("nodeName") or None
    raw = status.get("machine")
    usage = NOTHING
    if node and raw and status.get("desiredState") != DesiredState.STOPPED:
        try:
            usage = placing.usage_of(machines.MachineSpec.model_validate(raw))
        except pydantic.ValidationError:
            usage = NOTHING
    migration = status.get("migration") or {}
    also = None
    if migration.get("phase") in {p.value for p in migrations.ACTIVE_PHASES}:
        also = str(migration.get("targetNode") or "") or None
    return Seen(
        uid=str(meta.get("uid")),
        node=str(node) if node else None,
        usage=usage,
        rv=resource_version(meta.get("resourceVersion")),
        also=also,
    )


def usage_by_node(
    objs: Iterable[Mapping[str, Any]], *, exclude: str | None = None
) -> dict[str, placing.Usage]:
    """What the VMs in ``objs`` (raw) take per node, a migrating VM on both nodes,
    leaving out the VM whose uid is ``exclude``. For a caller that lists anyway."""
    out: dict[str, placing.Usage] = {}
    for obj in objs:
        s = seen(obj)
        if s.uid == exclude or s.usage == NOTHING:
            continue
        for node in Entry(s.node, s.usage, s.rv, False, s.also).nodes():
            out[node] = out.get(node, NOTHING) + s.usage
    return out


def _not_older(new: int | None, old: int | None) -> bool:
    return new is None or old is None or new >= old


def _minus(a: placing.Usage, b: placing.Usage) -> placing.Usage:
    return placing.Usage(a.cpu - b.cpu, a.memory_bytes - b.memory_bytes, a.gpus - b.gpus)


class Ledger:
    """Per VM uid: (node, usage); per node: the running total."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._totals: dict[str, placing.Usage] = {}
        self._deleted: set[str] = set()
        self.primed = False
        """True once a full list was merged (``resync``); placement waits for it."""

    # -- reads ---------------------------------------------------------------------

    def entry(self, uid: str) -> Entry | None:
        return self._entries.get(uid)

    def totals(self, *, exclude: str | None = None) -> dict[str, placing.Usage]:
        """Usage per node (a copy), leaving out ``exclude``'s own share."""
        out = dict(self._totals)
        mine = self._entries.get(exclude) if exclude is not None else None
        if mine is not None and mine.usage != NOTHING:
            for node in mine.nodes():
                out[node] = _minus(out[node], mine.usage)
        return out

    def __len__(self) -> int:
        return len(self._entries)

    # -- writes --------------------------------------------------------------------

    def _set(self, uid: str, entry: Entry | None) -> None:
        old = self._entries.pop(uid, None)
        if old is not None and old.usage != NOTHING:
            for node in old.nodes():
                left = _minus(self._totals[node], old.usage)
                if left == NOTHING:
                    del self._totals[node]
                else:
                    self._totals[node] = left
        if entry is None:
            return
        self._entries[uid] = entry
        if entry.usage != NOTHING:
            for node in entry.nodes():
                self._totals[node] = self._totals.get(node, NOTHING) + entry.usage

    def observe(self, s: Seen) -> None:
        """A watch event (or list item) for a VM that exists."""
        if s.uid in self._deleted:
            return
        cur = self._entries.get(s.uid)
        if cur is not None:
            if cur.pending and s.node is None:
                return  # predates our own write: nodeName is never cleared
            if not cur.pending and not _not_older(s.rv, cur.rv):
                return  # an older version than the one we hold
        self._set(s.uid, Entry(s.node, s.usage, s.rv, pending=False, also=s.also))

    def forget(self, uid: str) -> None:
        """The VM is gone (DELETED event)."""
        self._set(uid, None)
        self._deleted.add(uid)

    def reserve(self, uid: str, node: str, usage: placing.Usage) -> None:
        """Placement chose ``node``: count the VM there before its status is written."""
        cur = self._entries.get(uid)
        self._set(uid, Entry(node, usage, cur.rv if cur else None, pending=True))

    def confirm(self, uid: str, rv: int | None) -> None:
        """Our status write naming the node was accepted at ``rv``."""
        cur = self._entries.get(uid)
        if cur is not None and cur.pending:
            self._set(uid, Entry(cur.node, cur.usage, rv, pending=False))

    def release(self, uid: str) -> None:
        """Our status write failed: the VM is not placed, free what it reserved."""
        cur = self._entries.get(uid)
        if cur is not None and cur.pending:
            self._set(uid, Entry(None, NOTHING, cur.rv, pending=False))

    def resync(self, items: Iterable[Seen], *, rv: int | None) -> None:
        """Merge a full list taken at ``rv`` (the list's resourceVersion).

        Items go through ``observe``. An entry missing from the list was deleted before
        the list was taken, unless it is pending or newer than the list.
        """
        listed: set[str] = set()
        for s in items:
            listed.add(s.uid)
            self.observe(s)
        for uid, cur in list(self._entries.items()):
            if uid in listed or cur.pending:
                continue
            if rv is not None and cur.rv is not None and cur.rv > rv:
                continue
            self._set(uid, None)
        # A tombstone can go once a list no longer shows its VM: later lists won't either.
        self._deleted &= listed
        self.primed = True
