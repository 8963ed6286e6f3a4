"""bench/_harness.py: percentiles, audit parsing, writes per VM, server-side times."""

from __future__ import annotations

import calendar
import json
import math
from pathlib import Path
from typing import Any

import pytest

from . import load

pytestmark = pytest.mark.unit

h = load("_harness")

NS = "bench-test"


# --- percentiles and Stats -------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1, 2, 3, 4], 50, 2.5),  # between the two middle values
        ([0, 10], 95, 9.5),  # interpolated towards the upper value
        ([0, 10], 5, 0.5),
        (list(range(1, 21)), 95, 19.05),
        ([3, 1, 2], 0, 1),  # unsorted input: the minimum
        ([3, 1, 2], 100, 3),  # and the maximum
        ([7], 95, 7),
    ],
)
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert h.percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(h.percentile([], 50))


def test_stats_of_values_and_json() -> None:
    stats = h.Stats.of([10.0, 1.0, 2.0, 3.0])
    assert (stats.n, stats.p50, stats.max, stats.mean) == (4, 2.5, 10.0, 4.0)
    assert stats.p95 == pytest.approx(8.95)
    assert stats.json(1) == {"n": 4, "p50": 2.5, "p95": 9.0, "max": 10.0, "mean": 4.0}


def test_stats_of_nothing_publishes_nulls() -> None:
    assert h.Stats.of([]).json() == {"n": 0, "p50": None, "p95": None, "max": None, "mean": None}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05Z", calendar.timegm((2026, 1, 2, 3, 4, 5))),
        ("2026-01-02T03:04:05.250000Z", calendar.timegm((2026, 1, 2, 3, 4, 5)) + 0.25),
        ("2026-01-02T05:04:05+02:00", calendar.timegm((2026, 1, 2, 3, 4, 5))),
    ],
)
def test_parse_time(text: str, expected: float) -> None:
    assert h.parse_time(text) == pytest.approx(expected)


# --- audit log parsing ------------------------------------------------------------------

T0 = calendar.timegm((2026, 1, 2, 3, 4, 5))


def _stamp(offset: float) -> str:
    whole = int(offset)
    micro = round((offset - whole) * 1e6)
    return f"2026-01-02T03:04:{5 + whole:02d}.{micro:06d}Z"


def event(
    name: str,
    verb: str,
    at: float,
    *,
    sub: str = "",
    agent: str = "python/kubevisor",
    manager: str = "",
    code: int = 200,
    status: dict[str, Any] | None = None,
    namespace: str = NS,
    resource: str = "virtualmachines",
    stage: str = "ResponseComplete",
) -> dict[str, Any]:
    uri = f"/apis/kubevisor.io/v1alpha1/namespaces/{namespace}/virtualmachines/{name}"
    ev: dict[str, Any] = {
        "stage": stage,
        "verb": verb,
        "requestURI": uri + f"/{sub}" * bool(sub) + f"?fieldManager={manager}" * bool(manager),
        "userAgent": agent,
        "objectRef": {"resource": resource, "namespace": namespace, "name": name,
                      "subresource": sub or None},
        "responseStatus": {"code": code},
        "requestReceivedTimestamp": _stamp(at),
    }  # fmt: skip
    if status is not None:
        ev["requestObject"] = {"status": status}
    return ev


def test_read_audit_keeps_completed_vm_writes_of_the_namespace(tmp_path: Path) -> None:
    events = [
        event("a", "create", 0, agent="kvbench/1.0"),
        event(
            "a",
            "patch",
            1.5,
            sub="status",
            manager="kubevisor-controller",
            status={"nodeName": "n1"},
        ),
        event("a", "patch", 2, sub="status", code=409, status={"phase": "Running"}),
        event("a", "patch", 1, stage="ResponseStarted"),
        event("a", "patch", 1, namespace="other"),
        event("a", "patch", 1, resource="vmtemplates"),
    ]
    path = tmp_path / "audit.log"
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + '{"half a line')
    writes = h.read_audit(path, namespace=NS)
    assert [(w.verb, w.subresource, w.code) for w in writes] == [
        ("create", "", 200),
        ("patch", "status", 200),
        ("patch", "status", 409),
    ]
    create, placed, running = writes
    assert create.received == pytest.approx(T0)
    assert placed.received == pytest.approx(T0 + 1.5)
    assert (placed.field_manager, placed.node, placed.phase) == ("kubevisor-controller", "n1", "")
    assert (running.phase, running.node) == ("Running", "")
    assert [w.writer for w in writes] == ["user", "controller", "agent"]


def test_read_audit_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert h.read_audit(tmp_path / "none.log", namespace=NS) == []


@pytest.mark.parametrize(
    ("agent", "manager", "writer"),
    [
        ("kvbench", "", "user"),
        ("kvbench/1.0 python", "kubevisor-controller", "user"),
        ("kopf/1.37", "", "controller"),
        ("python/aiohttp", "kubevisor-controller", "controller"),
        ("python/aiohttp", "kubevisor-agent", "agent"),
        ("python/aiohttp", "", "agent"),
    ],
)
def test_writer(agent: str, manager: str, writer: str) -> None:
    w = h.AuditWrite("a", NS, "patch", "status", agent, 200, 0.0, field_manager=manager)
    assert w.writer == writer


# --- writes per VM -----------------------------------------------------------------------


def W(name: str, verb: str, at: float, *, sub: str = "", who: str = "agent", code: int = 200,
      phase: str = "", node: str = "") -> Any:  # fmt: skip
    agent, manager = {"user": ("kvbench", ""), "controller": ("x", "kubevisor-controller"),
                      "agent": ("x", "kubevisor-agent")}[who]  # fmt: skip
    return h.AuditWrite(name, NS, verb, sub, agent, code, at, field_manager=manager,
                        phase=phase, node=node)  # fmt: skip


WRITES = [
    # a: Running at t=2; one status write and the delete after that
    W("a", "create", 0, who="user"),
    W("a", "patch", 1, sub="status", who="controller", node="n1"),
    W("a", "patch", 1.5),  # finalizer (metadata)
    W("a", "patch", 2, sub="status", phase="Running"),
    W("a", "patch", 5, sub="status"),
    W("a", "delete", 6, who="user"),
    # b: Running at t=3, with a refused status write on the way
    W("b", "create", 0, who="user"),
    W("b", "patch", 1, sub="status", who="controller", node="n2"),
    W("b", "patch", 1.2, sub="status", code=409),
    W("b", "patch", 3, sub="status", phase="Running"),
    # z: not one of the benchmark's VMs
    W("z", "create", 0, who="user"),
    W("z", "patch", 1, sub="status"),
]
UNTIL = {"a": 2.0, "b": 3.0, "c": 0.0}


def test_count_writes_to_running_per_vm() -> None:
    counts = h.count_writes(WRITES, names=["a", "b", "c"], until=UNTIL)
    # a: create, status, finalizer, Running status (its write at t=2 counts: until is inclusive)
    # b: create, status, refused status, Running status; c: nothing yet
    assert counts.vms == 3
    assert counts.total == pytest.approx(8 / 3)
    assert counts.status == pytest.approx(5 / 3)
    assert counts.metadata == pytest.approx(1 / 3)
    assert counts.failed == pytest.approx(1 / 3)
    assert counts.max_status == 3
    assert counts.by_writer == pytest.approx({"user": 2 / 3, "controller": 2 / 3, "agent": 4 / 3})
    assert counts.json() == {"total": 2.67, "status": 1.67, "metadata": 0.33, "failed": 0.33,
                             "max_status": 3, "by_writer": {"agent": 1.33, "controller": 0.67,
                                                            "user": 0.67}}  # fmt: skip


def test_count_writes_settled_counts_later_writes_but_never_deletes() -> None:
    counts = h.count_writes(WRITES, names=["a", "b"])
    assert counts.total == pytest.approx(9 / 2)  # a: 5 (the t=5 status write too), b: 4
    assert counts.status == pytest.approx(6 / 2)
    assert counts.max_status == 3


def test_max_status_is_the_worst_vm_not_the_mean() -> None:
    writes = [W("a", "patch", i, sub="status") for i in range(5)] + [
        W(n, "patch", 0, sub="status") for n in "bcd"
    ]
    counts = h.count_writes(writes, names="abcd")
    assert counts.status == pytest.approx(2.0)
    assert counts.max_status == 5


# --- server-side times ------------------------------------------------------------------


def test_server_times_take_the_first_accepted_write_of_each_kind() -> None:
    writes = [
        W("a", "patch", 4, sub="status", phase="Running"),  # a later Running write
        W("a", "patch", 2.5, sub="status", phase="Running"),
        W("a", "patch", 2, sub="status", phase="Running", code=409),  # refused: not it
        W("a", "patch", 1, sub="status", who="controller"),  # controller, no node yet
        W("a", "patch", 1.5, sub="status", who="controller", node="n1"),
        W("a", "patch", 3, sub="status", who="controller", node="n2"),
        W("a", "create", 0.25, who="user"),
        W("b", "create", 1, who="user"),
        W("b", "patch", 1.5, sub="status", node="n1"),  # the agent naming a node: not placed
    ]
    times = h.server_times(writes)
    assert times == {"a": {"created": 0.25, "placed": 1.5, "running": 2.5}, "b": {"created": 1}}


def test_spans_are_end_minus_start_for_vms_that_have_both() -> None:
    times = {"a": {"created": 1.0, "placed": 1.5, "running": 4.0}, "b": {"created": 2.0}}
    assert h.spans(times, "created", "running") == [3.0]
    assert h.spans(times, "placed", "running") == [2.5]
    assert h.spans(times, "created", "placed") == [0.5]
