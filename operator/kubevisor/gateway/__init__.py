"""The display gateway (``kubevisor-gateway``): serves the noVNC page and proxies its
websocket to a desktop's VNC once the token in the URL admits it (docs/gateway.md).

Imports only ``kubevisor.api`` of ours; ``kubernetes_asyncio`` only in ``gateway.kube``.
"""
