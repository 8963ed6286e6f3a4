"""Restore in place (``kubevisor.io/restore-from``): needs the VM stopped and says so
otherwise (pure judgement)."""

from __future__ import annotations

import pytest

from kubevisor.api import virtualmachines, vmbackups
from kubevisor.controller.vms import restoring

pytestmark = pytest.mark.unit


def backup(vm: str = "web", phase: str = "Succeeded") -> vmbackups.VMBackup:
    return vmbackups.VMBackup.model_validate(
        {
            "metadata": {"name": "b1", "namespace": "ns"},
            "spec": {"vmName": vm},
            "status": {
                "phase": phase,
                "disks": [{"name": "root", "path": "/nas/ns/b1/root.qcow2"}],
            },
        }
    )


STATE = virtualmachines.VMRestoreState(
    backup="b1", disks=[virtualmachines.RestoreDisk(name="root", path="/nas/ns/b1/root.qcow2")]
)


@pytest.mark.parametrize(
    ("annotation", "found", "stopped", "current", "applied", "cond", "state"),
    [
        (None, backup(), True, None, None, None, None),
        ("b1", backup(), True, None, None, ("False", "RestorePending"), STATE),
        ("b1", backup(), False, None, None, ("False", "VMNotStopped"), None),
        ("b1", None, True, None, None, ("False", "SourceNotFound"), None),
        ("b1", backup(phase="Running"), True, None, None, ("False", "SourceNotFound"), None),
        ("b1", backup(vm="db"), True, None, None, ("False", "InvalidSpec"), None),
        # judged while stopped: kept even once the VM is asked to start (the agent acts first)
        ("b1", backup(), False, STATE, None, ("False", "RestorePending"), STATE),
        ("b1", backup(), False, STATE, "b1", ("True", "Succeeded"), STATE),
        # a restore judged for another backup is not carried over
        ("b2", None, True, STATE, "b1", ("False", "SourceNotFound"), None),
    ],
)
def test_judge(
    annotation: str | None,
    found: vmbackups.VMBackup | None,
    stopped: bool,
    current: virtualmachines.VMRestoreState | None,
    applied: str | None,
    cond: tuple[str, str] | None,
    state: virtualmachines.VMRestoreState | None,
) -> None:
    got, restore = restoring.judge(
        vm_name="web", annotation=annotation, backup=found, stopped=stopped,
        current=current, applied=applied,
    )  # fmt: skip
    assert (None if got is None else (got.status, got.reason)) == cond
    assert restore == state


def test_not_stopped_says_what_to_do() -> None:
    got, _ = restoring.judge(
        vm_name="web", annotation="b1", backup=backup(), stopped=False, current=None, applied=None
    )
    assert got is not None
    assert "needs the VM stopped" in got.message and "nothing was changed" in got.message
