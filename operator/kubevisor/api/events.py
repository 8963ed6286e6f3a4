"""The core/v1 Event body both the controller and the agent post about kubevisor objects.

One shape in one place: the two sides never import each other, and an Event that names its
object differently depending on who posted it would not show up in ``kubectl describe``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kubevisor.api import groups

#: Events about cluster-scoped objects go here (where kubectl looks for Node events).
CLUSTER_EVENT_NAMESPACE: str = "default"
#: Kinds that are not ours, with their apiVersion (the rebalancer posts about Nodes).
CORE_API_VERSIONS: Mapping[str, str] = {"Node": "v1"}

#: Longest message kept (the API server accepts more; a screenful is what a user reads).
MAX_MESSAGE: int = 1024


def body(
    obj: Mapping[str, Any],
    *,
    kind: str,
    type_: str,
    reason: str,
    message: str,
    component: str,
    now: datetime,
    host: str | None = None,
) -> dict[str, Any]:
    """A new Event about ``obj`` (a kubevisor object of ``kind``) from ``component``
    (on node ``host`` for the agent). Pure apart from the random name suffix. An object
    without a namespace (cluster-scoped: a RebalancePolicy, a Node) gets its Event in
    :data:`CLUSTER_EVENT_NAMESPACE`."""
    meta = obj["metadata"]
    source: dict[str, str] = {"component": component}
    involved: dict[str, Any] = {
        "apiVersion": CORE_API_VERSIONS.get(kind, groups.API_VERSION),
        "kind": kind,
        "name": meta["name"],
        "uid": meta.get("uid"),
    }
    if meta.get("namespace"):
        involved["namespace"] = meta["namespace"]
    out: dict[str, Any] = {
        "metadata": {
            "name": f"{meta['name']}.{uuid.uuid4().hex[:12]}",
            "namespace": meta.get("namespace") or CLUSTER_EVENT_NAMESPACE,
        },
        "involvedObject": involved,
        "type": type_,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "source": source,
        "reportingComponent": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    if host is not None:
        source["host"] = host
        out["reportingInstance"] = host
    return out
