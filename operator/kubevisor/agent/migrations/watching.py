"""Which Migrations an agent sees: one informer per role, narrowed server-side by the
Migration labels the controller sets (:mod:`kubevisor.api.groups`), and one status writer
per role, each applying only its own fields under its own field manager."""

from __future__ import annotations

import enum
from collections.abc import Callable

from kubevisor.agent.kube import ApiClient, watches
from kubevisor.agent.kube import statuses as kubestatuses
from kubevisor.agent.runtime import informing
from kubevisor.api import groups, kinds, migrations

PLURAL = kinds.MIGRATION.plural


class Role(enum.StrEnum):
    """Which side of a Migration this node is."""

    SOURCE = "source"
    TARGET = "target"


def selector(role: Role, node: str) -> str:
    """The server-side label selector of ``role`` on ``node`` (pure)."""
    label = (
        groups.LABEL_MIGRATION_SOURCE_NODE
        if role is Role.SOURCE
        else groups.LABEL_MIGRATION_TARGET_NODE
    )
    return f"{label}={node}"


def field_manager(role: Role) -> str:
    """The field manager of ``role``'s status fields (the contract's constants)."""
    if role is Role.SOURCE:
        return migrations.SOURCE_FIELD_MANAGER
    return migrations.TARGET_FIELD_MANAGER


def informer(
    api: ApiClient,
    role: Role,
    *,
    node: str,
    on_change: Callable[[informing.Key], None],
    resync: float = 300.0,
) -> informing.Informer:
    """An informer over the Migrations in which ``node`` plays ``role``."""
    source = watches.ListWatch(api, PLURAL, label_selector=selector(role, node))
    return informing.Informer(source, on_change=on_change, resync=resync)


def writer(api: ApiClient, role: Role) -> kubestatuses.StatusWriter:
    """The status writer of ``role`` (server-side apply as its field manager)."""
    return kubestatuses.StatusWriter(
        api, kind=kinds.MIGRATION.kind, plural=PLURAL, field_manager=field_manager(role)
    )
