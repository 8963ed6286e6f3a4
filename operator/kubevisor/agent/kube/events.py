"""Events the agent posts about the objects it realizes (a refusal the user must see).

Why a thin recorder of its own: the agent never imports the controller; this is the
same core/v1 Event shape the controller posts, reported by kubevisor-agent on its node.
A failed post is logged and dropped (an Event is a hint; the condition is the truth).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kubevisor.api import groups

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
        now = datetime.now(UTC)
        body = {
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:12]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": groups.API_VERSION,
                "kind": self.kind,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": "Warning",
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT, "host": self.node},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._core.create_namespaced_event(meta["namespace"], body)
        except ApiException as exc:
            logger.warning("event %s on %s not posted: %s", reason, meta["name"], exc.status)
