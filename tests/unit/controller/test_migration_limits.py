"""Parallel migration limits: cluster and per-node outbound caps, one move per VM, order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kubevisor.api import migrations
from kubevisor.controller.migrations import limits

pytestmark = pytest.mark.unit

P = migrations.MigrationPhase
R = migrations.MigrationReason
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _e(key: str, node: str, phase: P = P.PENDING, *, at: int = 0, vm: str = "") -> limits.Entry:
    return limits.Entry(
        key=f"ns/{key}",
        vm=f"ns/{vm or key}",
        source_node=node,
        phase=phase,
        created=T0 + timedelta(seconds=at),
    )


@pytest.mark.parametrize(
    ("case", "entries", "lim", "start", "waiting"),
    [
        ("nothing pending", [_e("a", "n1", P.RUNNING)], limits.Limits(), [], {}),
        ("one starts", [_e("a", "n1")], limits.Limits(), ["ns/a"], {}),
        (
            "two outbound per node by default, oldest first",
            [_e("c", "n1", at=3), _e("a", "n1", at=1), _e("b", "n1", at=2)],
            limits.Limits(),
            ["ns/a", "ns/b"],
            {"ns/c": R.NODE_OUTBOUND_LIMIT},
        ),
        (
            "active ones count against the node",
            [_e("x", "n1", P.TARGET_READY), _e("y", "n1", P.SCHEDULING), _e("a", "n1")],
            limits.Limits(),
            [],
            {"ns/a": R.NODE_OUTBOUND_LIMIT},
        ),
        (
            "final and pending ones hold no slot",
            [
                _e("x", "n1", P.SUCCEEDED),
                _e("y", "n1", P.FAILED),
                _e("z", "n1", P.CANCELLED),
                _e("a", "n1", at=1),
                _e("b", "n1", at=2),
            ],
            limits.Limits(),
            ["ns/a", "ns/b"],
            {},
        ),
        (
            "five per cluster by default",
            [_e(f"r{i}", f"n{i}", P.RUNNING) for i in range(4)]
            + [_e("a", "m1", at=1)]
            + [_e("b", "m2", at=2)],
            limits.Limits(),
            ["ns/a"],
            {"ns/b": R.CLUSTER_LIMIT},
        ),
        (
            "a busy node does not block others",
            [_e("a", "n1", at=1), _e("b", "n1", at=2), _e("c", "n2", at=3)],
            limits.Limits(outbound_per_node=1),
            ["ns/a", "ns/c"],
            {"ns/b": R.NODE_OUTBOUND_LIMIT},
        ),
        (
            "a VM moves once at a time",
            [_e("old", "n1", P.RUNNING, vm="vm"), _e("a", "n1", vm="vm")],
            limits.Limits(),
            [],
            {"ns/a": R.VM_ALREADY_MIGRATING},
        ),
        (
            "two pending for one VM: the older starts",
            [_e("b", "n1", at=2, vm="vm"), _e("a", "n1", at=1, vm="vm")],
            limits.Limits(),
            ["ns/a"],
            {"ns/b": R.VM_ALREADY_MIGRATING},
        ),
        (
            "ties in creation time go by key",
            [_e("b", "n1"), _e("a", "n1")],
            limits.Limits(per_cluster=1),
            ["ns/a"],
            {"ns/b": R.CLUSTER_LIMIT},
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_admit(
    case: str,
    entries: list[limits.Entry],
    lim: limits.Limits,
    start: list[str],
    waiting: dict[str, R],
) -> None:
    admission = limits.admit(entries, lim)
    assert list(admission.start) == start
    assert {k: w.reason for k, w in admission.waiting.items()} == waiting


def test_wait_messages_name_the_node_and_the_numbers() -> None:
    admission = limits.admit(
        [_e("x", "n1", P.RUNNING), _e("a", "n1", at=1), _e("b", "n2", at=2)],
        limits.Limits(per_cluster=5, outbound_per_node=1),
    )
    assert admission.waiting["ns/a"].message == (
        "node n1 is sending 1 migrations, it allows 1 at a time."
    )
    full = limits.admit([_e("x", "n1", P.RUNNING), _e("a", "n2")], limits.Limits(per_cluster=1))
    assert (
        full.waiting["ns/a"].message == "1 migrations are running, the cluster allows 1 at a time."
    )
    busy = limits.admit([_e("x", "n1", P.RUNNING, vm="v"), _e("a", "n1", vm="v")])
    assert busy.waiting["ns/a"].message == "VM ns/v is already being moved by Migration ns/x."


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, limits.Limits(5, 2)),
        ({limits.ENV_PER_CLUSTER: "10"}, limits.Limits(10, 2)),
        ({limits.ENV_OUTBOUND_PER_NODE: " 1 ", limits.ENV_PER_CLUSTER: ""}, limits.Limits(5, 1)),
    ],
)
def test_limits_from_env(environ: dict[str, str], expected: limits.Limits) -> None:
    assert limits.Limits.from_env(environ) == expected


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_limits_from_env_rejects_nonsense(value: str) -> None:
    with pytest.raises(ValueError):
        limits.Limits.from_env({limits.ENV_PER_CLUSTER: value})


def _refused(key: str, node: str, *, at: int) -> limits.Entry:
    entry = _e(key, node, at=at)
    return limits.Entry(**{**entry.__dict__, "refused": True})


@pytest.mark.parametrize(
    ("entries", "lim", "start", "waiting"),
    [
        # the older one cannot move (its preconditions refused it): the younger one gets
        # the only slot, the refused one waits for what is left
        (
            [_refused("old", "n1", at=1), _e("young", "n2", at=2)],
            limits.Limits(per_cluster=1),
            ["ns/young"],
            {"ns/old": R.CLUSTER_LIMIT},
        ),
        # with room, a refused one is admitted again (its preconditions are re-checked)
        (
            [_refused("old", "n1", at=1), _e("young", "n2", at=2)],
            limits.Limits(),
            ["ns/young", "ns/old"],
            {},
        ),
        # per node too
        (
            [_refused("old", "n1", at=1), _e("young", "n1", at=2)],
            limits.Limits(outbound_per_node=1),
            ["ns/young"],
            {"ns/old": R.NODE_OUTBOUND_LIMIT},
        ),
    ],
)
def test_a_refused_migration_does_not_keep_a_slot_from_one_that_can_move(
    entries: list[limits.Entry], lim: limits.Limits, start: list[str], waiting: dict[str, R]
) -> None:
    got = limits.admit(entries, lim)
    assert list(got.start) == start
    assert {k: w.reason for k, w in got.waiting.items()} == waiting


@pytest.mark.parametrize(
    ("conditions", "refused"),
    [
        ([], False),
        ([{"type": "Scheduled", "status": "False", "reason": "NoTargetFits"}], True),
        ([{"type": "Scheduled", "status": "False", "reason": "RTTTooHigh"}], True),
        ([{"type": "Scheduled", "status": "False", "reason": "ClusterLimitReached"}], False),
        ([{"type": "Scheduled", "status": "False", "reason": "VMAlreadyMigrating"}], False),
        ([{"type": "Scheduled", "status": "True", "reason": "Scheduled"}], False),
    ],
)
def test_the_handler_reads_refused_from_the_scheduled_condition(
    conditions: list[dict[str, str]], refused: bool
) -> None:
    from kubevisor.controller.migrations import handlers

    obj = {
        "metadata": {"name": "m", "namespace": "ns", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"vmName": "vm"},
        "status": {"phase": "Pending", "conditions": conditions},
    }
    assert handlers._entry(obj, {}).refused is refused
