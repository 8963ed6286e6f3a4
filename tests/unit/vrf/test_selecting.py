"""Which VRF objects a node realizes, and when its status entry is rewritten."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.agent.vrfs import selecting

pytestmark = pytest.mark.unit


def _obj(name: str, *, gen: int = 1, status: dict[str, Any] | None = None, **spec: Any) -> Any:
    return {
        "metadata": {"namespace": "ns", "name": name, "generation": gen},
        "spec": spec,
        "status": status or {},
    }


def test_select() -> None:
    refused = {
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "TableConflict", "observedGeneration": 1}
        ]
    }
    stale_refusal = {**refused, "tableAllocated": 1003}
    objs = [
        _obj("explicit", table=5),
        _obj("allocated", status={"tableAllocated": 1001}),
        _obj("waiting"),
        _obj("elsewhere", table=6, nodeSelector={"zone": "b"}),
        _obj("refused", table=7, status=refused),
        _obj("respecced", gen=2, status=stale_refusal),
        {**_obj("deleting", table=8), "metadata": {"name": "deleting", "deletionTimestamp": "x"}},
    ]
    sel = selecting.select(objs, labels={"zone": "a"})
    assert {n: s.spec.get("table") for n, s in sel.wanted.items()} == {
        "ns.explicit": 5,
        "ns.allocated": 1001,
        "ns.respecced": 1003,
    }
    assert list(sel.waiting) == ["ns.waiting"]
    assert "WaitingForTable" in sel.waiting["ns.waiting"][1]
    assert ("ns", "elsewhere") not in sel.reporting and ("ns", "waiting") in sel.reporting


def _entry(**kw: Any) -> dict[str, Any]:
    status: Any = {
        "backend": "netns",
        "table": 5,
        "interfaces": ["red0"],
        "routesInstalled": 2,
        "ready": True,
        "message": "realized",
        **kw,
    }
    return selecting.entry(status, generation=3, now="2025-01-01T00:00:00Z")


def test_needs_write() -> None:
    base = _entry()
    assert selecting.needs_write(None, base, age_seconds=None)
    assert not selecting.needs_write(base, {**base, "lastSyncTime": "later"}, age_seconds=1)
    assert selecting.needs_write(base, {**base, "routesInstalled": 1}, age_seconds=1)
    assert selecting.needs_write(base, {**base, "observedGeneration": 4}, age_seconds=1)
    used = _entry(usage={"cpuSeconds": 1.0, "memoryBytes": 10})
    assert selecting.needs_write(base, used, age_seconds=1)  # usage appeared
    newer = _entry(usage={"cpuSeconds": 2.0, "memoryBytes": 20})
    assert not selecting.needs_write(used, newer, age_seconds=10)  # usage alone: not yet
    assert selecting.needs_write(used, newer, age_seconds=selecting.USAGE_REFRESH_SECONDS + 1)


def test_entry_clears_absent_fields() -> None:
    failed = selecting.entry(None, generation=1, now="t", message="BackendUnavailable: x", table=9)
    assert failed["usage"] is None and failed["backend"] is None and failed["ready"] is False
    assert failed["table"] == 9


def test_vlan_member_refused_without_8021q() -> None:
    from kubevisor.agent.vrfs import planning

    spec: Any = {
        "table": 5,
        "interfaces": [{"name": "v0", "network": "default", "vlan": 7, "addresses": []}],
    }
    plan = planning.plan_node(
        {"v": spec},
        labels={},
        current={},
        bridge_for=lambda n, v: f"{n}v{v}",
        kernel_has_vrf=False,
        kernel_has_8021q=False,
    )
    assert plan.refused["v"].reason == "BackendUnavailable"
    assert "802.1Q not available in this kernel" in plan.refused["v"].message
    ok = planning.plan_node(
        {"v": spec}, labels={}, current={}, bridge_for=lambda n, v: f"{n}v{v}", kernel_has_vrf=True
    )
    assert ok.desired["v"].interfaces[0].bridge == "defaultv7"
