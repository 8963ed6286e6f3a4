"""The VMBackup reconciler's decisions, table by table (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubevisor.api import groups, virtualmachines, vmbackups
from kubevisor.controller.vmbackups import deciding

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
Phase = vmbackups.VMBackupPhase
Reason = vmbackups.BackupReason
MACHINE: dict[str, Any] = {
    "cpu": {"cores": 1},
    "memory": "128Mi",
    "disks": [{"name": "root", "size": "64Mi"}],
}


def vm(*, placed: bool = True) -> virtualmachines.VirtualMachine:
    status: dict[str, Any] = {"nodeName": "node-1", "machine": MACHINE} if placed else {}
    return virtualmachines.VirtualMachine.model_validate(
        {"metadata": {"name": "tiny"}, "spec": MACHINE, "status": status}
    )


def backup(
    *,
    mode: str = "Full",
    phase: str | None = None,
    target: str = "/nas",
    **status: Any,
) -> vmbackups.VMBackup:
    st: dict[str, Any] = {"phase": phase, **status} if phase else dict(status)
    return vmbackups.VMBackup.model_validate(
        {
            "metadata": {"name": "b"},
            "spec": {"vmName": "tiny", "mode": mode, "target": {"path": target}},
            "status": st or None,
        }
    )


def other(
    name: str, b: vmbackups.VMBackup, *, minutes: int = 0, deleting: bool = False
) -> deciding.Other:
    return deciding.Other(
        name=name, backup=b, deleting=deleting, completed=T0 + timedelta(minutes=minutes)
    )


def inputs(
    b: vmbackups.VMBackup,
    *,
    the_vm: virtualmachines.VirtualMachine | None = None,
    contenders: list[vmbackups.Turn] | None = None,
    others: list[deciding.Other] | None = None,
    deleting: bool = False,
    finalizers: tuple[str, ...] = (groups.FINALIZER,),
) -> deciding.Inputs:
    phase = (b.status.phase if b.status else None) or Phase.PENDING
    return deciding.Inputs(
        backup=b,
        name="b",
        finalizers=finalizers,
        deleting=deleting,
        vm=the_vm,
        turn=vmbackups.Turn("VMBackup", "b", T0, phase is Phase.RUNNING),
        contenders=contenders or [],
        others=others or [],
    )


SUCCEEDED_FULL = backup(
    phase="Succeeded", checkpoint="kubevisor-full", chain={"full": "full", "length": 1}
)
SUCCEEDED_INC = backup(
    mode="Incremental",
    phase="Succeeded",
    checkpoint="kubevisor-inc",
    chain={"full": "full", "previous": "full", "length": 2},
)


@pytest.mark.parametrize(
    ("case", "inp", "phase", "reason"),
    [
        ("no VM", inputs(backup()), Phase.PENDING, Reason.VM_NOT_FOUND),
        ("VM unplaced", inputs(backup(), the_vm=vm(placed=False)), Phase.PENDING,
         Reason.VM_NOT_PLACED),
        ("migration runs", inputs(backup(), the_vm=vm(), contenders=[
            vmbackups.Turn("Migration", "m", T0 + timedelta(hours=1), True)]),
         Phase.PENDING, Reason.MIGRATION_IN_PROGRESS),
        ("older backup waits too", inputs(backup(), the_vm=vm(), contenders=[
            vmbackups.Turn("VMBackup", "a", T0 - timedelta(hours=1), False)]),
         Phase.PENDING, Reason.BACKUP_IN_PROGRESS),
        ("younger migration waits for us", inputs(backup(), the_vm=vm(), contenders=[
            vmbackups.Turn("Migration", "m", T0 + timedelta(hours=1), False)]),
         Phase.RUNNING, Reason.IN_PROGRESS),
        ("incremental without previous", inputs(backup(mode="Incremental"), the_vm=vm()),
         Phase.PENDING, Reason.NO_PREVIOUS_BACKUP),
        ("incremental, previous to another target", inputs(
            backup(mode="Incremental"), the_vm=vm(),
            others=[other("full", backup(phase="Succeeded", checkpoint="c", target="/other"))]),
         Phase.PENDING, Reason.NO_PREVIOUS_BACKUP),
        ("incremental, previous was offline (no checkpoint)", inputs(
            backup(mode="Incremental"), the_vm=vm(),
            others=[other("full", backup(phase="Succeeded"))]),
         Phase.PENDING, Reason.NO_PREVIOUS_BACKUP),
        ("incremental, previous being deleted", inputs(
            backup(mode="Incremental"), the_vm=vm(),
            others=[other("full", SUCCEEDED_FULL, deleting=True)]),
         Phase.PENDING, Reason.NO_PREVIOUS_BACKUP),
        ("full admitted", inputs(backup(), the_vm=vm()), Phase.RUNNING, Reason.IN_PROGRESS),
        ("running follows agent success", inputs(backup(
            phase="Running", nodeName="node-1",
            agent={"node": "node-1", "state": "Succeeded"})), Phase.SUCCEEDED, Reason.SUCCEEDED),
        ("running follows agent failure", inputs(backup(
            phase="Running", nodeName="node-1",
            agent={"node": "node-1", "state": "Failed", "reason": "TargetUnavailable",
                   "message": "gone"})), Phase.FAILED, Reason.TARGET_UNAVAILABLE),
        ("running, agent copying", inputs(backup(phase="Running", nodeName="node-1")),
         Phase.RUNNING, Reason.IN_PROGRESS),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
def test_decide(case: str, inp: deciding.Inputs, phase: Phase, reason: str) -> None:
    d = deciding.decide(inp)
    assert (d.phase, d.ready.reason) == (phase, reason), case
    if phase is Phase.PENDING:
        assert d.wait and not d.labels, "a waiting backup is looked at again and not labelled"


def test_admission_labels_node_records_machine_and_full_chain() -> None:
    d = deciding.decide(inputs(backup(), the_vm=vm(), finalizers=()))
    assert d.labels == {vmbackups.LABEL_BACKUP_NODE: "node-1", groups.LABEL_VM: "tiny"}
    assert d.node_name == "node-1"
    assert d.machine is not None and d.machine.disks[0].name == "root"
    assert d.chain == vmbackups.BackupChain(full="b", length=1)
    assert d.finalizer == "add"


def test_incremental_chains_to_the_latest_succeeded_live_backup() -> None:
    d = deciding.decide(
        inputs(
            backup(mode="Incremental"),
            the_vm=vm(),
            others=[
                other("full", SUCCEEDED_FULL, minutes=1),
                other("inc", SUCCEEDED_INC, minutes=2),
            ],
        )
    )
    assert d.phase is Phase.RUNNING
    assert d.chain == vmbackups.BackupChain(full="full", previous="inc", length=3)


@pytest.mark.parametrize(
    ("others", "refused"),
    [
        ([], False),
        ([other("inc", SUCCEEDED_INC)], True),
        ([other("inc", SUCCEEDED_INC, deleting=True)], False),  # deleted together
        ([other("inc", backup(mode="Incremental", phase="Failed",
                              chain={"full": "full", "previous": "full"}))], False),
        ([other("inc", backup(mode="Incremental", phase="Succeeded",
                              chain={"full": "full", "previous": "other"}))], False),
    ],
)  # fmt: skip
def test_deletion_never_breaks_a_kept_chain(others: list[deciding.Other], refused: bool) -> None:
    inp = deciding.Inputs(
        backup=SUCCEEDED_FULL,
        name="full",
        finalizers=(groups.FINALIZER,),
        deleting=True,
        vm=None,
        turn=vmbackups.Turn("VMBackup", "full", T0, False),
        contenders=[],
        others=others,
    )
    d = deciding.decide(inp)
    if refused:
        assert d.finalizer is None
        assert d.ready.reason == Reason.NEEDED_BY_INCREMENTAL and "inc" in d.ready.message
        assert [e[:2] for e in d.events] == [("Warning", Reason.NEEDED_BY_INCREMENTAL)]
    else:
        assert d.finalizer == "remove"
        assert d.phase is Phase.SUCCEEDED, "deleting keeps the phase it had"


def test_final_phase_never_moves() -> None:
    d = deciding.decide(inputs(SUCCEEDED_FULL, the_vm=vm()))
    assert d.phase is Phase.SUCCEEDED and not d.labels and not d.wait
