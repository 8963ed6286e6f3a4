"""Migration flags/params from the policy, and job stats to progress and final figures."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kubevisor.devenv import testing

testing.require_module("libvirt")

import libvirt  # noqa: E402

from kubevisor.agent.libvirt import DomainInfo, DomainState, migrating  # noqa: E402
from kubevisor.api import migrations  # noqa: E402

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, tzinfo=UTC)
BASE = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
)


def _policy(**kw: Any) -> migrations.MigrationPolicy:
    return migrations.MigrationPolicy(auto_converge=False, **kw)


@pytest.mark.parametrize(
    ("case", "policy", "kw", "flags", "params"),
    [
        ("plain", _policy(), {"shared_storage": False}, BASE, {}),
        (
            "shared storage",
            _policy(),
            {"shared_storage": True},
            BASE | libvirt.VIR_MIGRATE_UNSAFE,
            {},
        ),
        (
            "auto-converge and post-copy",
            migrations.MigrationPolicy(post_copy=True),
            {"shared_storage": False},
            BASE | libvirt.VIR_MIGRATE_AUTO_CONVERGE | libvirt.VIR_MIGRATE_POSTCOPY,
            {},
        ),
        (
            "bandwidth and uri",
            _policy(bandwidth_mi_bps=100),
            {"shared_storage": False, "migrate_uri": "tcp://10.77.0.12"},
            BASE,
            {"bandwidth": 100, "migrate_uri": "tcp://10.77.0.12"},
        ),
        (
            "the target's management interface carries the stream",
            _policy(),
            {"shared_storage": False, "management_address": "10.78.0.12"},
            BASE,
            {"migrate_uri": "tcp://10.78.0.12", "listen_address": "10.78.0.12"},
        ),
        (
            "block copy of local disks",
            _policy(allow_block_copy=True),
            {"shared_storage": False, "local_disks": ["vda", "vdb"]},
            BASE | libvirt.VIR_MIGRATE_NON_SHARED_INC,
            {"migrate_disks": ["vda", "vdb"]},
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_build(
    case: str,
    policy: migrations.MigrationPolicy,
    kw: dict[str, Any],
    flags: int,
    params: dict[str, Any],
) -> None:
    request = migrating.build(policy, **kw)
    assert request.flags == flags
    assert dict(request.params) == params
    assert request.max_downtime_ms == policy.max_downtime_ms
    assert request.post_copy is policy.post_copy


def test_build_refuses_local_disks_without_block_copy() -> None:
    with pytest.raises(ValueError, match=r"vda are node-local and policy\.allowBlockCopy is false"):
        migrating.build(_policy(), shared_storage=False, local_disks=["vda"])


RUNNING = {
    "type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
    "time_elapsed": 1500,
    "data_total": 1000,
    "data_processed": 400,
    "data_remaining": 600,
    "memory_iteration": 2,
    "memory_dirty_rate": 10,
    "memory_page_size": 4096,
    "memory_bps": 200,
    "disk_bps": 100,
}


@pytest.mark.parametrize(
    ("case", "stats", "expected"),
    [
        (
            "running",
            RUNNING,
            {
                "dataTotalBytes": 1000,
                "dataProcessedBytes": 400,
                "dataRemainingBytes": 600,
                "memoryIterations": 2,
                "dirtyRateBytesPerSecond": 40960,
                "transferRateBytesPerSecond": 300,
                "percent": 40,
                "etaSeconds": 2,
                "elapsedMs": 1500,
            },
        ),
        (
            "eta rounds up, page size defaults to 4 KiB",
            {**RUNNING, "data_remaining": 601, "memory_page_size": None},
            {"etaSeconds": 3, "dirtyRateBytesPerSecond": 40960},
        ),
        (
            "not done is never 100 percent",
            {**RUNNING, "data_processed": 1000, "data_remaining": 0},
            {"percent": 99, "etaSeconds": 0},
        ),
        (
            "zero pages are skipped: percent from remaining, not processed",
            {**RUNNING, "data_processed": 320, "data_remaining": 0},
            {"percent": 99},
        ),
        (
            "processed when remaining is unknown",
            {**RUNNING, "data_remaining": None},
            {"percent": 40, "etaSeconds": None},
        ),
        (
            "completed is",
            {**RUNNING, "type": libvirt.VIR_DOMAIN_JOB_COMPLETED, "data_remaining": 0},
            {"percent": 100},
        ),
        (
            "no rate yet: no eta",
            {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "data_total": 10, "data_remaining": 10},
            {"etaSeconds": None, "transferRateBytesPerSecond": None, "percent": 0},
        ),
        ("zero total", {**RUNNING, "data_total": 0}, {"percent": None}),
        ("garbage is dropped", {**RUNNING, "memory_iteration": "x"}, {"memoryIterations": None}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_progress(case: str, stats: dict[str, Any], expected: dict[str, Any]) -> None:
    wire = migrating.progress(stats, now=NOW).model_dump(mode="json", by_alias=True)
    assert wire["updatedAt"] == "2026-01-01T00:00:00Z"
    assert {k: wire[k] for k in expected} == expected


def test_outcome() -> None:
    completed = {"time_elapsed": 1200, "downtime": 42, "data_processed": 269_000_000}
    done = migrating.outcome(completed, switched_to_post_copy=False)
    assert done == migrating.Outcome(1200, 42, 269_000_000, migrations.MigrationMode.PRE_COPY)
    post = migrating.outcome({}, switched_to_post_copy=True)
    assert post == migrating.Outcome(None, None, None, migrations.MigrationMode.POST_COPY)


@pytest.mark.parametrize(
    ("state", "reason", "expected"),
    [
        (DomainState.PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION, True),
        (DomainState.PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY, True),
        (DomainState.PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER, False),
        (DomainState.RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED, False),
    ],
    ids=["last copy round", "post-copy", "user pause", "running"],
)
def test_paused_by_migration(state: DomainState, reason: int, expected: bool) -> None:
    info = DomainInfo(name="d", uuid="u", state=state, reason=reason, persistent=True, xml="",
                      identity=None)  # fmt: skip
    assert migrating.paused_by_migration(info) is expected
