"""The controller connects, answers every not-yet-built kind, and stops on SIGTERM
(checked on its own, so it stays when every kind is implemented)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.api import groups
from kubevisor.controller import registry
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def _examples_by_kind() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion") == groups.API_VERSION:
                found.setdefault(doc["kind"], doc)
    return found


@pytest.fixture
def controller(cluster: Any, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with testing.running_controller(cluster.kubeconfig, log=tmp_path / "controller.log") as proc:
        yield proc


def test_not_implemented_kinds_report_a_condition(
    cluster: Any, controller: subprocess.Popen[bytes]
) -> None:
    import kubernetes

    api = kubernetes.client.CustomObjectsApi(cluster.api)
    examples = _examples_by_kind()
    pending = [k for k in registry.not_implemented_kinds() if k.kind in examples]
    if not pending:
        pytest.skip("every kind is implemented or has no example: nothing to check here")
    created = []
    for kind in pending:
        body = dict(examples[kind.kind])
        body["metadata"] = {"name": f"skeleton-{kind.singular}"}
        api.create_namespaced_custom_object(
            groups.GROUP, groups.VERSION, "default", kind.plural, body
        )
        created.append(kind)

    def condition(kind_plural: str, name: str) -> dict[str, Any] | None:
        obj = api.get_namespaced_custom_object(
            groups.GROUP, groups.VERSION, "default", kind_plural, name
        )
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c["type"] == "Ready":
                return dict(c)
        return None

    for kind in created:
        cond = testing.wait_for(
            lambda kind=kind: condition(kind.plural, f"skeleton-{kind.singular}"),
            timeout=60,
            what=f"{kind.kind} Ready condition",
        )
        assert cond["status"] == "False"
        assert cond["reason"] == "NotImplemented"
        assert kind.kind in cond["message"]

    for kind in created:
        api.delete_namespaced_custom_object(
            groups.GROUP, groups.VERSION, "default", kind.plural, f"skeleton-{kind.singular}"
        )


def test_sigterm_exits_cleanly_after_reconciling(
    cluster: Any, controller: subprocess.Popen[bytes]
) -> None:
    """Independent of which kinds are still NotImplemented: the controller is shown to be
    working (it reconciles a VMTemplate, a kind it implements), then SIGTERM ends it with 0."""
    import kubernetes

    api = kubernetes.client.CustomObjectsApi(cluster.api)
    body = dict(_examples_by_kind()["VMTemplate"])
    body["metadata"] = {"name": "skeleton-sigterm"}
    api.create_namespaced_custom_object(
        groups.GROUP, groups.VERSION, "default", "vmtemplates", body
    )
    try:
        testing.wait_for(
            lambda: (
                (
                    api.get_namespaced_custom_object(
                        groups.GROUP, groups.VERSION, "default", "vmtemplates", "skeleton-sigterm"
                    ).get("status")
                    or {}
                ).get("phase")
                == "Ready"
            ),
            timeout=60,
            what="the controller reconciles a VMTemplate",
        )
        controller.send_signal(signal.SIGTERM)
        assert controller.wait(timeout=60) == 0
    finally:
        api.delete_namespaced_custom_object(
            groups.GROUP, groups.VERSION, "default", "vmtemplates", "skeleton-sigterm"
        )
