"""Events the agent posts about the objects it realizes (a refusal the user must see).

Why a thin recorder of its own: the agent never imports the controller; this is the
same core/v1 Event shape the controller posts, reported by kubevisor-agent on its node.
A failed post is logged and dropped (an Event is a hint; the condition is the truth).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kubevisor.agent import metrics
from kubevisor.api import events

logger = logging.getLogger(__name__)

COMPONENT = "kubevisor-agent"


class Recorder:
    """Posts Warning Events about objects of ``kind`` from ``node``."""

    def __init__(self, api: client.ApiClient, *, kind: str, node: str) -> None:
        self._core: Any = client.CoreV1Api(api)
        self.kind = kind
        self.node = node

    async def warning(self, obj: dict[str, Any], reason: str, message: str) -> None:
        meta = obj["metadata"]
        body = events.body(
            obj,
            kind=self.kind,
            type_="Warning",
            reason=reason,
            message=message,
            component=COMPONENT,
            now=datetime.now(UTC),
            host=self.node,
        )
        try:
            await self._core.create_namespaced_event(meta["namespace"], body)
            metrics.api_write("create", "events")
        except ApiException as exc:
            logger.warning("event %s on %s not posted: %s", reason, meta["name"], exc.status)
