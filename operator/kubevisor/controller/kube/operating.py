"""kopf, behind three small handler shapes: what a kind asks of the watch machinery.

The kinds describe their handlers as plain data (``OnEvent``, ``OnChange``,
``Lifecycle``) and never import kopf; ``run`` registers them in one explicit
``kopf.OperatorRegistry`` and runs the operator. kopf installs its own SIGTERM/SIGINT
handlers and stops its watchers and handlers in order, so a SIGTERM ends the process
cleanly with status 0.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import kopf

from kubevisor.api import groups

Obj = dict[str, Any]


class Retry(Exception):
    """Raised by a handler that cannot work yet (not connected): kopf calls it again
    after ``delay`` seconds."""

    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


@dataclass(frozen=True)
class OnEvent:
    """Every watch event of ``plural``: ``fn(type, namespace, name, body)``; ``type`` is
    ADDED, MODIFIED, DELETED or None (the initial listing)."""

    plural: str
    fn: Callable[[str | None, str, str, Obj], Awaitable[None]]
    id: str | None = None
    """kopf's handler id; default ``<plural>-event`` (give one when a second handler
    watches the same kind)."""


@dataclass(frozen=True)
class OnChange:
    """Creation, resumption and spec updates of ``plural``: ``fn(meta, status)`` returns
    the status fields to patch, or None for nothing. ``id`` is the handler's name in
    kopf's bookkeeping annotations."""

    plural: str
    id: str
    fn: Callable[[Obj, Obj], Obj | None]


@dataclass(frozen=True)
class Lifecycle:
    """Run once before the watches start, and once when the operator stops."""

    startup: Callable[[], Awaitable[None]]
    cleanup: Callable[[], Awaitable[None]]


Handler = OnEvent | OnChange | Lifecycle


def configure(settings: kopf.OperatorSettings) -> None:
    """Settings that keep API writes few and status clean.

    kopf's bookkeeping (progress, last-handled diff base) goes into annotations under our
    own prefix instead of ``status``, so ``status`` holds only what users should read.
    Only warnings become Events automatically; our handlers post the Events users need.
    """
    prefix = "kopf.kubevisor.io"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]


def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # Explicit: kopf's implicit piggybacking on the client libraries picks one by
    # priority and failed on plain client-certificate kubeconfigs. A kubeconfig when
    # one is given, else the pod's service account.
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    info = kopf.login_with_service_account(**kwargs)
    # kopf names https://kubernetes.default.svc; in-cluster clients (client-go, the
    # Python clients) use KUBERNETES_SERVICE_HOST/PORT, which also work where cluster DNS
    # or kube-proxy do not (the chart's apiServer values set them).
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if info is not None and host:
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        info = dataclasses.replace(info, server=f"https://{host}:{port}")
    return info


def _on_event(registry: kopf.OperatorRegistry, h: OnEvent) -> None:
    async def event(
        type: str | None, name: str, namespace: str | None, body: kopf.Body, **_: Any
    ) -> None:
        assert namespace is not None  # every kind we watch is namespaced
        try:
            await h.fn(type, namespace, name, dict(body))
        except Retry as exc:
            raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc

    on = kopf.on.event(
        groups.GROUP, groups.VERSION, h.plural, id=h.id or f"{h.plural}-event", registry=registry
    )
    on(event)


def _on_change(registry: kopf.OperatorRegistry, h: OnChange) -> None:
    def change(**kwargs: Any) -> None:
        patch: kopf.Patch = kwargs["patch"]
        fields = h.fn(dict(kwargs["meta"]), dict(kwargs["status"]))
        if fields:
            patch.status.update(fields)

    for decorator in (kopf.on.create, kopf.on.resume, kopf.on.update):
        decorator(groups.GROUP, groups.VERSION, h.plural, id=h.id, registry=registry)(change)


def _lifecycle(registry: kopf.OperatorRegistry, h: Lifecycle) -> None:
    async def startup(**_: Any) -> None:
        await h.startup()

    async def cleanup(**_: Any) -> None:
        await h.cleanup()

    kopf.on.startup(registry=registry)(startup)
    kopf.on.cleanup(registry=registry)(cleanup)


def registry_for(handlers: Iterable[Handler]) -> kopf.OperatorRegistry:
    """A kopf registry holding exactly ``handlers`` (and the login)."""
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(_login)
    for h in handlers:
        if isinstance(h, OnEvent):
            _on_event(registry, h)
        elif isinstance(h, OnChange):
            _on_change(registry, h)
        else:
            _lifecycle(registry, h)
    return registry


def run(handlers: Iterable[Handler], *, namespaces: list[str], verbose: bool) -> None:
    """Serve ``namespaces`` (all when empty) with ``handlers`` until SIGTERM."""
    registry = registry_for(handlers)
    settings = kopf.OperatorSettings()
    configure(settings)
    # kopf.configure() sets up logging (format, level); a basicConfig() as well would
    # print every line twice.
    kopf.configure(verbose=verbose)
    kopf.run(
        registry=registry,
        settings=settings,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=None,
    )
