"""The agent's Kubernetes adapter: the only agent package that imports kubernetes_asyncio.

`connecting` loads the configuration, `watches` lists and watches a kind through a
selector for the runtime's informer, `objects` reads objects and Secrets and patches
finalizers, `statuses` writes status (server-side apply, per-node merge patches),
`leases` renews the node's Lease. Everything else in the agent receives plain data.
"""

from kubernetes_asyncio.client import ApiClient

__all__ = ["ApiClient"]
