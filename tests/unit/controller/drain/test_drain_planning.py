"""Table tests for the drain plan (controller/drain/planning.py)."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.api import groups
from kubevisor.api.conditions import Reason
from kubevisor.controller.drain import planning

pytestmark = pytest.mark.unit


def vm(name: str, node: str, *, strategy: str = "LiveMigrate", phase: str = "Running") -> Any:
    return {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
        "spec": {"evictionStrategy": strategy},
        "status": {"nodeName": node, "phase": phase},
    }


def mig(name: str, vm_name: str, phase: str | None) -> Any:
    status: dict[str, Any] = {"phase": phase} if phase else {}
    if phase == "Failed":
        status["conditions"] = [{"type": "Ready", "reason": "TargetFailed", "message": "gone."}]
    return {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"vmName": vm_name},
        "status": status,
    }


@pytest.mark.parametrize(
    ("vms", "migs", "created", "evictable"),
    [
        pytest.param(
            [vm("a", "node-1"), vm("b", "node-1"), vm("c", "node-1")],
            [],
            ["a-drain-node-1", "b-drain-node-1", "c-drain-node-1"],
            {"a": Reason.EVICTING, "b": Reason.EVICTING, "c": Reason.EVICTING},
            id="three LiveMigrate VMs: three Migrations",
        ),
        pytest.param(
            [vm("a", "node-1")],
            [mig("a-drain-node-1", "a", "Running")],
            [],
            {"a": Reason.EVICTING},
            id="resync: no duplicate",
        ),
        pytest.param(
            [vm("a", "node-1")],
            [mig("users", "a", None)],
            [],
            {"a": Reason.EVICTING},
            id="the user's own unfinished Migration counts",
        ),
        pytest.param(
            [vm("a", "node-1", strategy="None")],
            [],
            [],
            {"a": Reason.EVICTION_STRATEGY_NONE},
            id="evictionStrategy None stays",
        ),
        pytest.param(
            [vm("a", "node-1", phase="Stopped")],
            [],
            [],
            {"a": Reason.NOT_MIGRATABLE},
            id="stopped VM is not migrated",
        ),
        pytest.param(
            [vm("a", "node-1")],
            [mig("a-drain-node-1", "a", "Failed")],
            [],
            {"a": Reason.NOT_MIGRATABLE},
            id="failed drain Migration is not retried",
        ),
        pytest.param(
            [vm("a", "node-2")],
            [],
            [],
            {"a": None},
            id="VM on an uncordoned node: no condition",
        ),
    ],
)
def test_plan(
    vms: list[Any], migs: list[Any], created: list[str], evictable: dict[str, Any]
) -> None:
    result = planning.plan({"node-1"}, vms, migs)
    assert [n.name for n in result.create] == created
    got = {k[1]: (v.reason if v else None) for k, v in result.evictable.items()}
    assert got == evictable


def test_failed_message_names_the_migration_and_its_reason() -> None:
    result = planning.plan({"node-1"}, [vm("a", "node-1")], [mig("a-drain-node-1", "a", "Failed")])
    cond = result.evictable[("default", "a")]
    assert cond is not None and cond.status == "False"
    assert "a-drain-node-1" in cond.message and "TargetFailed" in cond.message


def test_body_labels_and_owner() -> None:
    (new,) = planning.plan({"node-1"}, [vm("a", "node-1")], []).create
    body = planning.body(new)
    assert body["metadata"]["labels"] == {groups.LABEL_VM: "a", groups.LABEL_DRAIN_NODE: "node-1"}
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-a"
    assert body["spec"] == {"vmName": "a"}


def test_long_names_fit() -> None:
    name = planning.drain_name("v" * 250, "node-1")
    assert len(name) <= 253 and name == planning.drain_name("v" * 250, "node-1")
