"""The agent's backup plan (pure) and the libvirt backup/checkpoint XML builders."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import pytest

from kubevisor.devenv import testing

testing.require_module("libvirt")

import libvirt  # noqa: E402

from kubevisor.agent.backups import planning  # noqa: E402
from kubevisor.agent.libvirt import backingup  # noqa: E402
from kubevisor.api import vmbackups  # noqa: E402

pytestmark = pytest.mark.unit

A = planning.Action
BASE = planning.Observed(
    phase=vmbackups.VMBackupPhase.RUNNING,
    reported=None,
    mode=vmbackups.BackupMode.FULL,
    deleting=False,
    controller_finalizer=True,
    agent_finalizer=False,
    domain="running",
    job_running=False,
    final_complete=False,
    driving=False,
)


@pytest.mark.parametrize(
    ("change", "action"),
    [
        ({}, A.LIVE),
        ({"domain": "paused"}, A.LIVE),
        ({"domain": "shutoff"}, A.OFFLINE),
        ({"domain": None}, A.OFFLINE),
        ({"domain": "shutoff", "mode": vmbackups.BackupMode.INCREMENTAL}, A.FAIL),
        ({"job_running": True}, A.LIVE),  # adopt the job a restarted agent finds
        ({"final_complete": True}, A.ADOPT_DONE),  # renamed before the report was lost
        ({"driving": True}, A.NOTHING),
        ({"reported": vmbackups.AgentState.SUCCEEDED}, A.NOTHING),
        ({"reported": vmbackups.AgentState.FAILED}, A.NOTHING),
        ({"phase": vmbackups.VMBackupPhase.PENDING}, A.NOTHING),
        # deletion: only once the controller released it, only if we hold files
        ({"deleting": True}, A.NOTHING),
        ({"deleting": True, "controller_finalizer": False}, A.NOTHING),
        ({"deleting": True, "controller_finalizer": False, "agent_finalizer": True}, A.CLEAN_UP),
    ],
)
def test_decide(change: dict[str, object], action: planning.Action) -> None:
    plan = planning.decide(dataclasses.replace(BASE, **change))  # type: ignore[arg-type]
    assert plan.action is action
    if action is A.FAIL:
        assert plan.reason == vmbackups.BackupReason.VM_NOT_RUNNING


TARGETS = [
    backingup.DiskTarget(dev="vda", file="/nas/default/.b.partial/root.qcow2"),
    backingup.DiskTarget(dev="hdc", file=None),
]


def test_backup_xml_full_and_incremental() -> None:
    full = ET.fromstring(backingup.backup_xml(TARGETS, incremental=None))
    assert full.get("mode") == "push" and full.find("incremental") is None
    vda, hdc = full.findall("./disks/disk")
    assert (vda.get("name"), vda.get("backup"), vda.get("type")) == ("vda", "yes", "file")
    assert vda.find("target").get("file") == "/nas/default/.b.partial/root.qcow2"  # type: ignore[union-attr]
    assert vda.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert (hdc.get("name"), hdc.get("backup")) == ("hdc", "no")
    inc = ET.fromstring(backingup.backup_xml(TARGETS, incremental="kubevisor-b0"))
    assert inc.findtext("incremental") == "kubevisor-b0"


def test_checkpoint_xml_tracks_backed_up_disks_only() -> None:
    cp = ET.fromstring(backingup.checkpoint_xml("kubevisor-b", TARGETS))
    assert cp.findtext("name") == "kubevisor-b"
    assert [(d.get("name"), d.get("checkpoint")) for d in cp.findall("./disks/disk")] == [
        ("vda", "bitmap"),
        ("hdc", "no"),
    ]


def test_domain_disks() -> None:
    xml = """<domain><devices>
      <disk type='file' device='disk'><source file='/d/root.qcow2'/><target dev='vda'/></disk>
      <disk type='file' device='cdrom'><target dev='hdc'/><readonly/></disk>
    </devices></domain>"""
    assert backingup.domain_disks(xml) == [
        backingup.DomainDisk(dev="vda", source="/d/root.qcow2", device="disk", readonly=False),
        backingup.DomainDisk(dev="hdc", source=None, device="cdrom", readonly=True),
    ]


@pytest.mark.parametrize(
    ("stats", "expected"),
    [
        ({"disk_processed": 5, "disk_total": 10}, backingup.Sample(5, 10)),
        ({"data_processed": 3, "data_total": 0}, backingup.Sample(3, None)),
        ({}, backingup.Sample(0, None)),
    ],
)
def test_sample(stats: dict[str, int], expected: backingup.Sample) -> None:
    assert backingup.sample(stats) == expected


def test_outcome() -> None:
    op = libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP
    ok = backingup.outcome({"operation": op, "type": libvirt.VIR_DOMAIN_JOB_COMPLETED,
                            "disk_total": 7})  # fmt: skip
    assert ok == backingup.Outcome(True, "", 7)
    bad = backingup.outcome({"operation": op, "type": libvirt.VIR_DOMAIN_JOB_FAILED,
                             "errmsg": "No space left"})  # fmt: skip
    assert bad is not None and not bad.succeeded and bad.message == "No space left"
    assert backingup.outcome({"operation": 1, "type": libvirt.VIR_DOMAIN_JOB_COMPLETED}) is None
