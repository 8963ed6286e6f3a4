"""Which Migrations the agent's tick looks at (``handling.unsettled``): every one that may
still need this node, none that is finished here — finished Migrations stay cached as
long as users keep them, and ticking them would cost a libvirt lookup each, forever."""

from __future__ import annotations

from typing import Any

import pytest

from kubevisor.agent.migrations import handling, watching

pytestmark = pytest.mark.unit

SOURCE = watching.Role.SOURCE
TARGET = watching.Role.TARGET


def _mig(phase: str | None, **reports: dict[str, Any]) -> dict[str, Any]:
    status: dict[str, Any] = dict(reports)
    if phase is not None:
        status["phase"] = phase
    return {"metadata": {"name": "m", "namespace": "default"}, "status": status}


@pytest.mark.parametrize(
    ("obj", "role", "expected"),
    [
        # Not final: both roles may have work.
        (_mig(None), SOURCE, True),
        (_mig("PreparingTarget"), TARGET, True),
        (_mig("Running", source={"node": "n1", "state": "Migrating"}), SOURCE, True),
        # The source reported the job's end: settled, whatever the phase says yet.
        (_mig("Running", source={"node": "n1", "state": "Completed"}), SOURCE, False),
        (_mig("Failed", source={"node": "n1", "state": "Aborted"}), SOURCE, False),
        # Final phase and no job of ours: settled; still Migrating: a restart to repair.
        (_mig("Failed"), SOURCE, False),
        (_mig("Failed", source={"node": "n1", "state": "Migrating"}), SOURCE, True),
        # Another node's report is not ours.
        (_mig("Failed", source={"node": "n9", "state": "Migrating"}), SOURCE, False),
        # Target: arrived, or cleaned up, or never prepared: settled.
        (_mig("Succeeded", target={"node": "n1", "state": "Ready"}), TARGET, False),
        (_mig("Failed", target={"node": "n1", "state": "CleanedUp"}), TARGET, False),
        (_mig("Cancelled"), TARGET, False),
        # Failed while prepared here: the clean-up is still owed.
        (_mig("Failed", target={"node": "n1", "state": "Ready"}), TARGET, True),
        (_mig("Cancelled", target={"node": "n1", "state": "Preparing"}), TARGET, True),
    ],
)
def test_the_tick_skips_only_what_is_settled_on_this_node(
    obj: dict[str, Any], role: watching.Role, expected: bool
) -> None:
    assert handling.unsettled(obj, role, "n1") is expected


N = "kubevisor.io/node"
T = "kubevisor.io/migration-target"


@pytest.mark.parametrize(
    ("phase", "reported", "domain_here", "labels", "expected"),
    [
        ("Succeeded", "Completed", False, {N: "n2"}, True),
        ("Succeeded", "Completed", False, {}, True),  # the VM is gone from our caches
        # not a success of ours
        ("Running", "Completed", False, {N: "n2"}, False),
        ("Failed", "Failed", False, {N: "n1"}, False),
        ("Succeeded", None, False, {N: "n2"}, False),
        # the files are live disks again: a domain here, placed here, or coming back
        ("Succeeded", "Completed", True, {N: "n2"}, False),
        ("Succeeded", "Completed", False, {N: "n1"}, False),
        ("Succeeded", "Completed", False, {N: "n2", T: "n1"}, False),
    ],
)
def test_stale_source_copies_only_after_our_success_and_never_while_the_vm_is_here(
    phase: str, reported: str | None, domain_here: bool, labels: dict[str, str], expected: bool
) -> None:
    from kubevisor.agent.migrations import sourcing

    got = sourcing.stale_copies_here(
        phase=phase, reported=reported, domain_here=domain_here, vm_labels=labels, node="n1"
    )
    assert got is expected
