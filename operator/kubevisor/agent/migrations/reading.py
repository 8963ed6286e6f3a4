"""What both migration roles read the same way: the Migration itself, the VM's resolved
machine and identity, and the clock. A Migration or machine that does not parse is
logged and skipped (the controller owns saying so in status), never raised into the
loop."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pydantic

from kubevisor.agent import domainxml
from kubevisor.agent.runtime import informing
from kubevisor.api import machines, migrations

logger = logging.getLogger(__name__)

Key = informing.Key


def now() -> datetime:
    """The time reports carry (one clock for both roles, so tests can read it)."""
    return datetime.now(UTC)


def migration(key: Key, obj: dict[str, Any]) -> migrations.Migration | None:
    """The Migration ``obj`` as the contract reads it, or None (logged) if it cannot."""
    try:
        return migrations.Migration.model_validate(obj)
    except pydantic.ValidationError as exc:
        logger.warning("%s/%s: Migration unreadable: %s", *key, exc)
        return None


def machine(vm_obj: dict[str, Any] | None) -> machines.MachineSpec | None:
    """The VM's ``status.machine`` (what the controller resolved), or None."""
    raw = ((vm_obj or {}).get("status") or {}).get("machine")
    if raw is None:
        return None
    try:
        return machines.MachineSpec.model_validate(raw)
    except pydantic.ValidationError:
        return None


def identity(vm_obj: dict[str, Any]) -> domainxml.Identity:
    """The VM's identity as its disks and domain are named after it."""
    meta = vm_obj.get("metadata") or {}
    return domainxml.Identity(
        namespace=str(meta.get("namespace")), name=str(meta.get("name")), uid=str(meta.get("uid"))
    )
