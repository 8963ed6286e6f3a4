"""Which VirtualMachines an agent sees: one informer per role, each narrowed server-side.

- ``placed``: the VMs placed on this node (label ``kubevisor.io/node=<node>``); these
  are the ones the agent realizes.
- ``incoming``: the VMs for which this node is the target of a live migration (label
  ``kubevisor.io/migration-target=<node>``); known to the agent so a domain arriving
  for one is not an orphan. Nothing acts on them yet.

The label names are the contract in :mod:`kubevisor.api.groups`; the handler re-checks
the node inside each pass (the selector is the filter, the re-check the guard).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from kubevisor.agent.kube import ApiClient, watches
from kubevisor.agent.runtime import informing
from kubevisor.api import groups, kinds

PLURAL = kinds.VIRTUALMACHINE.plural


class Role(enum.StrEnum):
    """Why an agent watches a VM."""

    PLACED = "placed"
    INCOMING = "incoming"


def selector(role: Role, node: str) -> str:
    """The server-side label selector of ``role`` on ``node`` (pure)."""
    label = groups.LABEL_NODE if role is Role.PLACED else groups.LABEL_MIGRATION_TARGET
    return f"{label}={node}"


def informer(
    api: ApiClient,
    role: Role,
    *,
    node: str,
    on_change: Callable[[informing.Key], None],
    resync: float = 300.0,
) -> informing.Informer:
    """An informer over the VMs of ``role`` on ``node``."""
    source = watches.ListWatch(api, PLURAL, label_selector=selector(role, node))
    return informing.Informer(source, on_change=on_change, resync=resync)
