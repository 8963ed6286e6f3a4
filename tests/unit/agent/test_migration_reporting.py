"""The agents' Migration status bodies: only their own fields, camelCase, no nulls."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kubevisor.agent import disks
from kubevisor.agent.libvirt import migrating
from kubevisor.agent.migrations import reporting, watching
from kubevisor.api import machines, migrations

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def test_source_fields_are_the_source_set() -> None:
    own = reporting.source_fields(
        migrations.SourceReport(node="node-1", state=migrations.SourceState.COMPLETED, time=NOW),
        started_at=NOW,
        progress=migrations.MigrationProgress(percent=99, updated_at=NOW),
        mode=migrations.MigrationMode.PRE_COPY,
    )
    assert set(own) == set(migrations.SOURCE_FIELDS)
    assert own["source"] == {"node": "node-1", "state": "Completed", "time": own["source"]["time"]}
    assert own["mode"] == "PreCopy"
    assert own["progress"]["percent"] == 99


def test_source_fields_carry_the_figures_after_post_copy() -> None:
    own = reporting.source_fields(
        migrations.SourceReport(node="node-1", state=migrations.SourceState.COMPLETED, time=NOW),
        mode=migrations.MigrationMode.POST_COPY,
        outcome=migrating.Outcome(
            total_time_ms=22350,
            downtime_ms=7,
            bytes_transferred=None,
            mode=migrations.MigrationMode.POST_COPY,
        ),
    )
    assert set(own) == {"source", "mode", "totalTimeMs", "downtimeMs"}
    assert (own["totalTimeMs"], own["downtimeMs"]) == (22350, 7)


def test_target_fields() -> None:
    report = migrations.TargetReport(
        node="node-2", state=migrations.TargetState.READY, domain_active=True
    )
    assert reporting.target_fields(report) == {
        "target": {"node": "node-2", "state": "Ready", "domainActive": True}
    }
    own = reporting.target_fields(
        report,
        outcome=migrating.Outcome(
            total_time_ms=1860,
            downtime_ms=399,
            bytes_transferred=88_600_000,
            mode=migrations.MigrationMode.PRE_COPY,
        ),
    )
    assert set(own) == set(migrations.TARGET_FIELDS)
    assert (own["totalTimeMs"], own["downtimeMs"], own["bytesTransferred"]) == (
        1860,
        399,
        88_600_000,
    )


def test_selectors_and_managers() -> None:
    assert watching.selector(watching.Role.SOURCE, "n1") == "kubevisor.io/source-node=n1"
    assert watching.selector(watching.Role.TARGET, "n2") == "kubevisor.io/target-node=n2"
    assert watching.field_manager(watching.Role.SOURCE) == migrations.SOURCE_FIELD_MANAGER
    assert watching.field_manager(watching.Role.TARGET) == migrations.TARGET_FIELD_MANAGER


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ([], []),
        ([("root", "virtio", "shared")], []),
        ([("root", "virtio", "local")], ["vda"]),
        ([("root", "virtio", "shared"), ("data", "virtio", "local")], ["vdb"]),
        (
            [("a", "sata", "local"), ("b", "virtio", "local"), ("c", "sata", "shared")],
            ["sda", "vda"],
        ),
    ],
)
def test_local_disk_targets_number_disks_per_bus(
    layout: list[tuple[str, str, str]], expected: list[str]
) -> None:
    machine = machines.MachineSpec.model_validate(
        {
            "cpu": {"cores": 1},
            "memory": "256Mi",
            "disks": [{"name": n, "bus": b, "storage": s, "size": "1Gi"} for n, b, s in layout],
        }
    )
    assert disks.local_disk_targets(machine) == expected
