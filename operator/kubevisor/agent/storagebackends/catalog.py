"""The StorageBackends this agent knows, by name: what a disk naming one is planned on.

The reach loop (:mod:`.reaching`) lists the backends every round through
:meth:`Catalog.list`, which keeps what it read; a VM pass asks :meth:`Catalog.for_machine`
for the backends its disks name, and a name not seen yet (a backend created a moment ago)
makes it list once more rather than wait for the next round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from kubevisor.api import machines, storagebackends

Spec = storagebackends.StorageBackendSpec


def specs_of(objects: Iterable[Mapping[str, Any]]) -> dict[str, Spec]:
    """Name -> spec of each readable StorageBackend object (pure). Unreadable objects are
    skipped: the API server validated them, and an agent one version behind may not parse
    a newer type — it must not fail for it."""
    out: dict[str, Spec] = {}
    for obj in objects:
        name = str((obj.get("metadata") or {}).get("name") or "")
        try:
            spec = Spec.model_validate(obj.get("spec") or {})
        except ValidationError:
            continue
        if name:
            out[name] = spec
    return out


class Catalog:
    """The last listed StorageBackends; ``list_backends`` reads them from the API."""

    def __init__(self, list_backends: Callable[[], Awaitable[list[dict[str, Any]]]]) -> None:
        self._list_backends = list_backends
        self._specs: dict[str, Spec] = {}

    async def list(self) -> list[dict[str, Any]]:
        """List the backends (the reach loop's source) and remember them."""
        objects = await self._list_backends()
        self._specs = specs_of(objects)
        return objects

    async def for_machine(self, machine: machines.MachineSpec) -> dict[str, Spec]:
        """The specs of the backends the machine's disks name (listing again when one is
        unknown); a name still missing is absent from the answer (the planner says so)."""
        wanted = {d.backend for d in machine.disks if d.backend is not None}
        if not wanted:
            return {}
        if not wanted <= self._specs.keys():
            await self.list()
        return {name: self._specs[name] for name in wanted if name in self._specs}
