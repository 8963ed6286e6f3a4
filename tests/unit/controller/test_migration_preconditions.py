"""Migration preconditions: each refusal's reason and sentence, the order, the choice."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubevisor.api import migrations, nodes, virtualmachines
from kubevisor.controller.migrations import preconditions
from kubevisor.controller.placement import placing

pytestmark = pytest.mark.unit

Mi = 2**20
NOW = datetime(2026, 1, 1, tzinfo=UTC)
R = migrations.MigrationReason
SHARED = "/srv/shared"


def _lease(
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    rtts: Mapping[str, float] | None = None,
    renewed: datetime = NOW,
    **capacity: Any,
) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "cpu": 4,
        "memory_bytes": 1024 * Mi,
        "networks": ("default", "lab"),
        "shared_storage": SHARED,
        "migration_uri": f"qemu+tcp://{name}/system",
    }
    facts.update(capacity)
    return nodes.lease_body(
        node=name,
        labels=labels or {},
        capacity=nodes.Capacity(**facts),
        segments=(),
        now=renewed,
        rtts=rtts,
    )


def _vm(
    *, phase: str = "Running", node: str | None = "node-1", **machine: Any
) -> virtualmachines.VirtualMachine:
    spec = {
        "cpu": {"cores": 1},
        "memory": "256Mi",
        "disks": [{"name": "root", "storage": "shared"}],
        "nics": [{"name": "eth0", "network": "default"}],
        **machine,
    }
    return virtualmachines.VirtualMachine.model_validate(
        {
            "metadata": {"name": "vm1", "namespace": "ns"},
            "spec": {"templateRef": {"name": "t"}},
            "status": {"phase": phase, "nodeName": node, "machine": spec},
        }
    )


SOURCE = _lease("node-1", rtts={"node-2": 0.4, "node-3": 0.5})
POLICY = migrations.MigrationPolicy()


def _check(
    vm: virtualmachines.VirtualMachine,
    targets: list[dict[str, Any]],
    *,
    policy: migrations.MigrationPolicy = POLICY,
    used: Mapping[str, placing.Usage] | None = None,
    source: dict[str, Any] = SOURCE,
    **kw: Any,
) -> preconditions.Verdict:
    return preconditions.check(
        vm, policy, leases=[source, *targets], used=used or {}, now=NOW, **kw
    )


@pytest.mark.parametrize(
    ("case", "vm", "target", "policy", "used", "reasons", "phrases"),
    [
        ("fits", _vm(), _lease("node-2"), POLICY, {}, [], []),
        (
            "lease expired",
            _vm(),
            _lease("node-2", renewed=NOW - timedelta(minutes=5)),
            POLICY,
            {},
            [R.NODE_LOST],
            ["node-2", "30 s"],
        ),
        (
            "selector",
            _vm(nodeSelector={"zone": "b"}),
            _lease("node-2", labels={"zone": "a"}),
            POLICY,
            {},
            [R.NODE_SELECTOR_MISMATCH],
            ["node node-2", "zone=b"],
        ),
        (
            "memory",
            _vm(),
            _lease("node-2"),
            POLICY,
            {"node-2": placing.Usage(0, 896 * Mi, 0)},
            [R.INSUFFICIENT_CAPACITY],
            ["node node-2", "need 256Mi, free 128Mi"],
        ),
        (
            "cpu",
            _vm(cpu={"cores": 6}),
            _lease("node-2"),
            POLICY,
            {},
            [R.INSUFFICIENT_CAPACITY],
            ["need 6, free 4"],
        ),
        (
            "network and vlan",
            _vm(nics=[{"name": "eth1", "network": "storage", "vlan": 100}]),
            _lease("node-2"),
            POLICY,
            {},
            [R.NETWORK_UNAVAILABLE],
            ["node node-2 lacks network: storage (used by NIC eth1 on VLAN 100)"],
        ),
        (
            "no migration uri",
            _vm(),
            _lease("node-2", migration_uri=None),
            POLICY,
            {},
            [R.MIGRATION_URI_MISSING],
            ["node node-2", "migrationURI"],
        ),
        (
            "local disk without block copy",
            _vm(disks=[{"name": "data", "storage": "local"}]),
            _lease("node-2"),
            POLICY,
            {},
            [R.STORAGE_UNREACHABLE],
            ["disk data", "node-1's local storage", "allowBlockCopy is false"],
        ),
        (
            "local disk with block copy",
            _vm(disks=[{"name": "data", "storage": "local"}]),
            _lease("node-2"),
            migrations.MigrationPolicy(allow_block_copy=True),
            {},
            [],
            [],
        ),
        (
            "shared storage the target does not mount",
            _vm(),
            _lease("node-2", shared_storage="/other"),
            POLICY,
            {},
            [R.STORAGE_UNREACHABLE],
            ["disk root", "/srv/shared", "node node-2 mounts /other"],
        ),
        (
            "storage backend the target does not reach",
            _vm(disks=[{"name": "data", "backend": "nas-1"}]),
            _lease("node-2", storage_backends={"san-1": "iscsi"}),
            POLICY,
            {},
            [R.STORAGE_UNREACHABLE],
            ["disk data is on StorageBackend nas-1", "node node-2 does not reach"],
        ),
        (
            "nfs backend reached: no block copy needed",
            _vm(disks=[{"name": "data", "backend": "nas-1"}]),
            _lease("node-2", storage_backends={"nas-1": "nfs"}),
            POLICY,
            {},
            [],
            [],
        ),
        (
            "local backend still needs block copy",
            _vm(disks=[{"name": "data", "backend": "scratch"}]),
            _lease("node-2", storage_backends={"scratch": "local"}),
            POLICY,
            {},
            [R.STORAGE_UNREACHABLE],
            ["disk data is on StorageBackend scratch (type local", "allowBlockCopy is false"],
        ),
        (
            "local backend with block copy",
            _vm(disks=[{"name": "data", "backend": "scratch"}]),
            _lease("node-2", storage_backends={"scratch": "local"}),
            migrations.MigrationPolicy(allow_block_copy=True),
            {},
            [],
            [],
        ),
        (
            "rtt over the limit",
            _vm(),
            _lease("node-2"),
            migrations.MigrationPolicy(max_rtt_ms=0.25),
            {},
            [R.RTT_TOO_HIGH],
            ["node-1 to node node-2 is 0.4 ms", "maxRTTMs 0.25 ms"],
        ),
        (
            "named cpu model missing",
            _vm(cpu={"cores": 1, "model": "Icelake-Server"}),
            _lease("node-2", cpu_models=("qemu64", "Haswell")),
            POLICY,
            {},
            [R.CPU_MODEL_UNSUPPORTED],
            ["node node-2 cannot run CPU model Icelake-Server", "2 models"],
        ),
        (
            "named cpu model offered",
            _vm(cpu={"cores": 1, "model": "Haswell"}),
            _lease("node-2", cpu_models=("qemu64", "Haswell")),
            POLICY,
            {},
            [],
            [],
        ),
        (
            "several at once, in order",
            _vm(
                cpu={"cores": 8},
                disks=[{"name": "data", "storage": "local"}],
                nics=[{"name": "eth1", "network": "x"}],
            ),
            _lease("node-2"),
            POLICY,
            {},
            [R.INSUFFICIENT_CAPACITY, R.NETWORK_UNAVAILABLE, R.STORAGE_UNREACHABLE],
            [],
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_named_target(
    case: str,
    vm: virtualmachines.VirtualMachine,
    target: dict[str, Any],
    policy: migrations.MigrationPolicy,
    used: Mapping[str, placing.Usage],
    reasons: list[R],
    phrases: list[str],
) -> None:
    verdict = _check(vm, [target], policy=policy, used=used, target="node-2")
    assert [r.reason for r in verdict.refusals] == reasons, verdict.message
    if not reasons:
        assert (verdict.target, verdict.reason) == ("node-2", R.SCHEDULED)
        return
    assert verdict.target is None
    assert verdict.reason == reasons[0], "a named target's headline is its first refusal"
    assert all(r.node == "node-2" for r in verdict.refusals)
    for phrase in phrases:
        assert phrase in verdict.message


@pytest.mark.parametrize(
    ("case", "source_cpu", "target_cpu", "refused"),
    [
        ("same host cpu", "Skylake", "Skylake", False),
        ("different host cpu", "Skylake", "Haswell", True),
        ("target does not report", "Skylake", None, False),
        ("source does not report", None, "Haswell", False),
    ],
)
def test_host_cpu_modes_need_equal_host_cpus(
    case: str, source_cpu: str | None, target_cpu: str | None, refused: bool
) -> None:
    for mode in preconditions.HOST_CPU_MODES:
        verdict = _check(
            _vm(cpu={"cores": 1, "model": mode}),
            [_lease("node-2", host_cpu_model=target_cpu)],
            source=_lease("node-1", rtts={"node-2": 1}, host_cpu_model=source_cpu),
        )
        assert (verdict.target is None) is refused, verdict.message
        if refused:
            assert verdict.refusals[0].reason is R.CPU_MODEL_UNSUPPORTED
            assert f"{mode} exposes node node-1's Skylake, node node-2 has Haswell" in (
                verdict.message
            )


@pytest.mark.parametrize(
    ("case", "source_rtts", "target_rtts", "require", "reason"),
    [
        ("unknown refuses", None, None, True, R.RTT_UNKNOWN),
        ("unknown allowed when not required", None, None, False, None),
        ("target's measurement counts", None, {"node-1": 0.3}, True, None),
        ("target's too high", None, {"node-1": 30.0}, True, R.RTT_TOO_HIGH),
        ("source's wins over target's", {"node-2": 30.0}, {"node-1": 0.1}, True, R.RTT_TOO_HIGH),
    ],
)
def test_rtt(
    case: str,
    source_rtts: dict[str, float] | None,
    target_rtts: dict[str, float] | None,
    require: bool,
    reason: R | None,
) -> None:
    verdict = _check(
        _vm(),
        [_lease("node-2", rtts=target_rtts)],
        source=_lease("node-1", rtts=source_rtts),
        require_rtt=require,
    )
    assert [r.reason for r in verdict.refusals] == ([reason] if reason else [])


@pytest.mark.parametrize(
    ("case", "vm", "target", "reason", "phrase"),
    [
        ("not running", _vm(phase="Stopped"), None, R.VM_NOT_RUNNING, "vm1 is Stopped"),
        ("no node", _vm(node=None), None, R.VM_NOT_RUNNING, "no node"),
        ("source has no lease", _vm(node="node-9"), None, R.NODE_LOST, "node-9"),
        ("target is source", _vm(), "node-1", R.TARGET_IS_SOURCE, "already runs on node node-1"),
        ("unknown target", _vm(), "node-7", R.TARGET_NOT_FOUND, "node node-7 has no"),
    ],
)
def test_vm_and_target_refusals(
    case: str, vm: virtualmachines.VirtualMachine, target: str | None, reason: R, phrase: str
) -> None:
    verdict = _check(vm, [_lease("node-2")], target=target)
    assert (verdict.target, verdict.reason) == (None, reason)
    assert phrase in verdict.message


def test_choice_is_placements_most_free_memory_and_skips_refused_nodes() -> None:
    targets = [_lease("node-2"), _lease("node-3"), _lease("node-4", networks=("default",))]
    used = {"node-2": placing.Usage(1, 512 * Mi, 0)}
    verdict = _check(_vm(nics=[{"name": "e", "network": "lab"}]), targets, used=used)
    # node-1 is the source, node-4 lacks "lab", node-2 has less free memory than node-3.
    assert (verdict.target, verdict.reason) == ("node-3", R.SCHEDULED)
    assert verdict.refusals == (), "a chosen target carries no refusals"


def test_no_node_fits_lists_every_node() -> None:
    targets = [_lease("node-2", memory_bytes=128 * Mi), _lease("node-3", networks=())]
    verdict = _check(_vm(), targets)
    assert (verdict.target, verdict.reason) == (None, R.NO_TARGET)
    assert verdict.message.startswith("no node can take VM vm1: node node-2: not enough memory")
    assert "node node-3 lacks network: default (used by NIC eth0)" in verdict.message
    assert [r.node for r in verdict.refusals] == ["node-2", "node-3"]


def test_single_node_cluster() -> None:
    verdict = _check(_vm(), [])
    assert (verdict.reason, verdict.message) == (R.NO_TARGET, "node node-1 is the only node.")


def test_cordoned_node_is_never_chosen() -> None:
    # node-3 has more free memory and would win, but its Node is unschedulable.
    targets = [_lease("node-2"), _lease("node-3")]
    used = {"node-2": placing.Usage(1, 512 * Mi, 0)}
    verdict = _check(_vm(), targets, used=used, cordoned=frozenset({"node-3"}))
    assert (verdict.target, verdict.reason) == ("node-2", R.SCHEDULED)


def test_cordoned_named_target_is_refused_with_its_reason() -> None:
    verdict = _check(_vm(), [_lease("node-2")], target="node-2", cordoned=frozenset({"node-2"}))
    assert (verdict.target, verdict.reason) == (None, R.TARGET_CORDONED)
    assert "node node-2 is cordoned" in verdict.message


def test_every_other_node_cordoned_lists_them() -> None:
    verdict = _check(_vm(), [_lease("node-2")], cordoned=frozenset({"node-2"}))
    assert (verdict.target, verdict.reason) == (None, R.NO_TARGET)
    assert [r.reason for r in verdict.refusals] == [R.TARGET_CORDONED]
    assert "node node-2 is cordoned" in verdict.message
