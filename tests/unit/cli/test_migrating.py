"""The migrate/drain CLI's pure parts: the Migration body, the progress line, the final
figures, why a Migration waits or failed, what a follower prints, the drain's state."""

from __future__ import annotations

import io
from typing import Any

import pytest

from kubevisor.api import groups
from kubevisor.cli import migrating

pytestmark = pytest.mark.unit


def test_migration_body_is_the_api_models() -> None:
    body = migrating.migration_body("web", "prod", target="node-2", name="web-abc")
    assert body == {
        "apiVersion": groups.API_VERSION,
        "kind": "Migration",
        "metadata": {"name": "web-abc", "namespace": "prod"},
        "spec": body["spec"],
    }
    assert body["spec"]["vmName"] == "web" and body["spec"]["targetNode"] == "node-2"
    assert body["spec"]["cancel"] is False and body["spec"]["policy"]["maxDowntimeMs"] == 300
    generated = migrating.migration_body("web", "prod")["metadata"]["name"]
    assert generated.startswith("web-") and len(generated) == len("web-") + 6
    assert "targetNode" not in migrating.migration_body("web", "prod")["spec"]


MiB = 1024**2


@pytest.mark.parametrize(
    ("progress", "expected"),
    [
        ({}, "[" + "." * 30 + "]   0%"),
        (
            {"percent": 50, "dataProcessedBytes": 44 * MiB, "dataTotalBytes": 88 * MiB,
             "transferRateBytesPerSecond": 12 * MiB, "etaSeconds": 4, "memoryIterations": 1},
            "[" + "#" * 15 + "." * 15 + "]  50%  44/88 MiB  12 MiB/s  ETA 4 s  iteration 1",
        ),
        ({"percent": 100}, "[" + "#" * 30 + "] 100%"),
    ],
)  # fmt: skip
def test_progress_line(progress: dict[str, Any], expected: str) -> None:
    assert migrating.progress_line(progress) == expected


def test_figures() -> None:
    status = {"phase": "Succeeded", "sourceNode": "node-1", "targetNode": "node-2",
              "totalTimeMs": 642, "downtimeMs": 87, "bytesTransferred": 88 * MiB,
              "mode": "PreCopy"}  # fmt: skip
    assert migrating.figures(status) == (
        "Succeeded: node-1 -> node-2, total 642 ms, downtime 87 ms, moved 88 MiB, mode PreCopy"
    )
    assert migrating.figures({"phase": "Failed", "sourceNode": "a", "targetNode": "b"}) == (
        "Failed: a -> b"
    )


def _cond(type_: str, reason: str, message: str) -> dict[str, str]:
    return {"type": type_, "status": "False", "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"phase": "Pending", "conditions": [_cond("Scheduled", "RTTTooHigh", "50 ms"),
                                             _cond("Ready", "RTTTooHigh", "r")]},
         "RTTTooHigh: 50 ms"),
        ({"phase": "Failed", "conditions": [_cond("Scheduled", "Scheduled", "ok"),
                                            _cond("Ready", "TargetFailed", "node-2 lost")]},
         "TargetFailed: node-2 lost"),
        ({"phase": "Cancelled"}, "Cancelled"),
    ],
)  # fmt: skip
def test_why(status: dict[str, Any], expected: str) -> None:
    assert migrating.why(status) == expected


def test_follow_prints_phases_waits_and_progress_until_the_end() -> None:
    waiting = [_cond("Scheduled", "ClusterLimitReached", "5 running")]
    states = iter(
        [
            {"status": {"phase": "Pending", "conditions": waiting}},
            {"status": {"phase": "Running", "progress": {"percent": 10}}},
            {"status": {"phase": "Running", "progress": {"percent": 10}}},
            {"status": {"phase": "Running", "progress": {"percent": 90}}},
            {"status": {"phase": "Succeeded"}},
        ]
    )  # fmt: skip
    out = io.StringIO()
    final = migrating.follow(lambda: next(states), out=out, tty=False, cancel=lambda: None,
                             sleep=lambda _s: None)  # fmt: skip
    assert final == {"phase": "Succeeded"}
    lines = out.getvalue().splitlines()
    assert lines[0] == "phase Pending"
    assert lines[1] == "  waiting: ClusterLimitReached: 5 running"
    assert lines[2] == "phase Running"
    assert lines[3].endswith(" 10%") and lines[4].endswith(" 90%")  # unchanged not repeated
    assert lines[5] == "phase Succeeded"


def test_drain_state_splits_moving_from_staying() -> None:
    def vm(name: str, node: str, evictable: dict[str, str] | None = None) -> dict[str, Any]:
        conds = [evictable] if evictable else []
        return {"metadata": {"namespace": "d", "name": name},
                "status": {"nodeName": node, "conditions": conds}}  # fmt: skip

    vms = [
        vm("a", "node-1", {"type": "Evictable", "status": "True", "reason": "Evicting"}),
        vm("b", "node-1", _cond("Evictable", "EvictionStrategyNone", "stays")),
        vm("c", "node-2"),
        vm("d", "node-1"),
    ]
    assert migrating.drain_state(vms, "node-1") == (
        ["d/a", "d/d"],
        ["d/b: EvictionStrategyNone: stays"],
    )
