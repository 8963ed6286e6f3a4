"""Which handler module serves which kind.

Every kind gets handlers: a kind whose logic is not built yet reports ``Ready=False``
with reason ``NotImplemented`` (``notimplemented.py``) instead of silence, so a user who
applies it sees why nothing happens.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import kopf

from kubevisor.api import kinds
from kubevisor.controller import notimplemented

#: kind -> module (under kubevisor.controller) whose import registers its handlers.
IMPLEMENTED: dict[str, str] = {"VirtualMachine": "vms", "VMTemplate": "vmtemplates", "VRF": "vrfs"}


def not_implemented_kinds() -> list[kinds.Kind]:
    """The kinds that still answer ``NotImplemented``."""
    return [k for k in kinds.KINDS if k.kind not in IMPLEMENTED]


def register_all() -> None:
    """Register handlers for every kind; idempotent per process."""

    @kopf.on.login()
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # Explicit: kopf's implicit piggybacking on the client libraries picks one by
        # priority and failed on plain client-certificate kubeconfigs. A kubeconfig when
        # one is given, else the pod's service account.
        if os.environ.get("KUBECONFIG"):
            return kopf.login_with_kubeconfig(**kwargs)
        return kopf.login_with_service_account(**kwargs)

    @kopf.on.startup()
    def _settings(settings: kopf.OperatorSettings, **_: object) -> None:
        from kubevisor.controller import main

        main.configure(settings)

    for module in IMPLEMENTED.values():
        importlib.import_module(f"kubevisor.controller.{module}")
    for kind in not_implemented_kinds():
        notimplemented.register(kind)
