"""Which VRF objects a node realizes, and when its status entry is rewritten."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.agent.vrfs import planning, selecting

pytestmark = pytest.mark.unit


def _obj(name: str, *, gen: int = 1, status: dict[str, Any] | None = None, **spec: Any) -> Any:
    return {
        "metadata": {"namespace": "ns", "name": name, "generation": gen},
        "spec": spec,
        "status": status or {},
    }


def _decided(table: int | None = None, gen: int = 1, **status: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"observedGeneration": gen, **status}
    if table is not None:
        out["tableAllocated"] = table
    return out


def test_select() -> None:
    refused = _decided(
        conditions=[
            {"type": "Ready", "status": "False", "reason": "TableConflict", "observedGeneration": 1}
        ]
    )
    objs = [
        _obj("explicit", table=5, status=_decided(5)),
        _obj("allocated", status=_decided(1001)),
        _obj("undecided", table=5),  # the controller has not seen it yet
        _obj("respecced", gen=2, status=_decided(1003)),  # generation 2 not decided yet
        _obj("elsewhere", table=6, nodeSelector={"zone": "b"}, status=_decided(6)),
        _obj("refused", table=7, status=refused),
        _obj("invalid", table=252),
        {**_obj("deleting", table=8), "metadata": {"name": "deleting", "deletionTimestamp": "x"}},
    ]
    sel = selecting.select(objs, labels={"zone": "a"})
    assert {n: s.table for n, s in sel.wanted.items()} == {"ns.explicit": 5, "ns.allocated": 1001}
    assert sorted(sel.waiting) == ["ns.invalid", "ns.respecced", "ns.undecided"]
    assert sel.waiting["ns.undecided"].problem.reason == "WaitingForTable"
    assert sel.waiting["ns.invalid"].problem.reason == "InvalidSpec"
    assert "252" in sel.waiting["ns.invalid"].problem.message
    assert ("ns", "elsewhere") not in sel.reporting and ("ns", "undecided") in sel.reporting
    assert ("ns", "refused") not in sel.reporting


def _entry(**kw: Any) -> dict[str, Any]:
    status: Any = {
        "backend": "netns",
        "table": 5,
        "interfaces": ["red0"],
        "routesInstalled": 2,
        "ready": True,
        "reason": None,
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
    problem = planning.Problem("BackendUnavailable", "802.1Q not available in this kernel.")
    failed = selecting.entry(None, generation=1, now="t", problem=problem, table=9)
    assert failed["usage"] is None and failed["backend"] is None and failed["ready"] is False
    assert failed["table"] == 9
    assert failed["reason"] == "BackendUnavailable"
    assert failed["message"] == "802.1Q not available in this kernel."


def test_reason_change_is_written() -> None:
    base = _entry(ready=False, reason="SegmentMissing", message="m")
    assert selecting.needs_write(base, {**base, "reason": "KernelError"}, age_seconds=1)


def test_daemon_entry_is_compared_as_the_api_server_holds_it() -> None:
    """A merge patch clears the daemon's None fields, so the stored entry lacks them: that
    is no change; a new pid or state is."""
    daemon = {"name": "bird", "version": "2.0.12", "state": "Restarting", "pid": None,
              "restarts": 1, "configHash": None}  # fmt: skip
    wanted = _entry(daemon=daemon)
    assert wanted["daemon"] == daemon
    stored = {**wanted, "daemon": {k: v for k, v in daemon.items() if v is not None}}
    assert not selecting.needs_write(stored, wanted, age_seconds=1)
    running = _entry(daemon={**daemon, "state": "Running", "pid": 42, "configHash": "abc"})
    assert selecting.needs_write(stored, running, age_seconds=1)
    assert selecting.needs_write(_entry(), wanted, age_seconds=1)  # daemon appeared
    assert selecting.entry(None, generation=1, now="t")["daemon"] is None
