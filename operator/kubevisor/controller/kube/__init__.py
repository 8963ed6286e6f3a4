"""The controller's one Kubernetes adapter: the API client (``client``) and kopf
(``operating``).

Only this package imports ``kubernetes_asyncio`` and ``kopf`` (an import-linter
contract says so); the kinds, the runtime and placement receive plain dicts and call
the narrow methods here.
"""
