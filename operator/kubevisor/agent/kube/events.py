"""Events the agent posts about the objects it realizes (what it saw fail, or succeed).

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
from kubevisor.api import eventreasons, events

logger = logging.getLogger(__name__)

COMPONENT = "kubevisor-agent"


class Recorder:
    """Posts Events about objects of ``kind`` from ``node``: the type from
    ``api/eventreasons``, repeats aggregated into a count (``api/events.post``)."""

    def __init__(self, api: client.ApiClient, *, kind: str, node: str) -> None:
        self._core: Any = client.CoreV1Api(api)
        self._series = events.Aggregator()
        self.kind = kind
        self.node = node

    async def warning(self, obj: dict[str, Any], reason: str, message: str) -> None:
        """A failure the user must see (a reason the table does not know is a Warning)."""
        await self.post(obj, reason, message, type_="Warning")

    async def post(
        self, obj: dict[str, Any], reason: str, message: str, *, type_: str = "Normal"
    ) -> None:
        """An Event about ``obj``; ``type_`` only for a reason the table lacks."""
        meta = obj["metadata"]
        now = datetime.now(UTC)
        body = events.body(
            obj,
            kind=self.kind,
            type_=eventreasons.type_of(reason, default=type_),
            reason=reason,
            message=message,
            component=COMPONENT,
            now=now,
            host=self.node,
        )
        try:
            verb = await events.post(self._core, self._series, body, now, gone=_gone)
            metrics.api_write(verb, "events")
        except ApiException as exc:
            logger.warning("event %s on %s not posted: %s", reason, meta["name"], exc.status)


def _gone(exc: BaseException) -> bool:
    return isinstance(exc, ApiException) and exc.status == 404
