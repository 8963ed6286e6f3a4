"""Which VMBackups an agent sees (those the controller labelled for its node) and the
one status writer of its fields."""

from __future__ import annotations

from collections.abc import Callable

from kubevisor.agent.kube import ApiClient, watches
from kubevisor.agent.kube import statuses as kubestatuses
from kubevisor.agent.runtime import informing
from kubevisor.api import kinds, vmbackups

PLURAL = kinds.VMBACKUP.plural


def informer(
    api: ApiClient,
    *,
    node: str,
    on_change: Callable[[informing.Key], None],
    resync: float = 300.0,
) -> informing.Informer:
    """An informer over the VMBackups this node's agent takes."""
    source = watches.ListWatch(api, PLURAL, label_selector=vmbackups.node_selector(node))
    return informing.Informer(source, on_change=on_change, resync=resync)


def writer(api: ApiClient) -> kubestatuses.StatusWriter:
    """Server-side apply of the agent's VMBackup fields as ``AGENT_FIELD_MANAGER``."""
    return kubestatuses.StatusWriter(
        api, kind=kinds.VMBACKUP.kind, plural=PLURAL, field_manager=vmbackups.AGENT_FIELD_MANAGER
    )
