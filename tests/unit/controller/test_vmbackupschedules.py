"""VMBackupSchedule: pruning never breaks a kept chain, the next backup's mode, and one
pass decided (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pydantic
import pytest

from kubevisor.api import vmbackups, vmbackupschedules
from kubevisor.controller.vmbackupschedules import deciding, planning

pytestmark = pytest.mark.unit

P = vmbackups.VMBackupPhase
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def item(spec: str, n: int) -> planning.Item:
    """``F`` full, ``I`` incremental on the one before, then phase s/f/r/p, ``x`` deleting:
    ``Is`` is a Succeeded incremental on backup n-1."""
    kind, phase = (
        spec[0],
        {"s": P.SUCCEEDED, "f": P.FAILED, "r": P.RUNNING, "p": P.PENDING}[spec[1]],
    )
    return planning.Item(
        name=f"b{n}",
        created=T0 + timedelta(hours=n),
        phase=phase,
        previous=f"b{n - 1}" if kind == "I" else None,
        live=True,
        deleting="x" in spec,
    )


def items(specs: str) -> list[planning.Item]:
    return [item(s, n) for n, s in enumerate(specs.split())]


@pytest.mark.parametrize(
    ("specs", "keep", "kept", "deleted"),
    [
        # fulls only: the newest N stay
        ("Fs Fs Fs Fs", 2, "b3 b2", "b0 b1"),
        ("Fs Fs", 5, "b1 b0", ""),
        # the newest kept is an incremental: its whole chain stays
        ("Fs Is Is Fs Is", 2, "b4 b3", "b0 b1 b2"),
        ("Fs Is Is Fs Is", 1, "b4 b3", "b0 b1 b2"),
        ("Fs Is Is Is", 1, "b3 b2 b1 b0", ""),
        ("Fs Is Is Is Fs", 1, "b4", "b0 b1 b2 b3"),
        ("Fs Is Is Is Fs", 2, "b4 b3 b2 b1 b0", ""),
        # copying ones stay, and so does what they chain to
        ("Fs Fs Fr", 1, "b2 b1", "b0"),
        ("Fs Ir", 1, "b1 b0", ""),
        ("Fs Fs Fp", 1, "b2 b1", "b0"),
        # a Failed one goes once a newer one Succeeded; the newest Failed stays
        ("Fs Ff Fs", 1, "b2", "b0 b1"),
        ("Fs Fs Ff", 1, "b2 b1", "b0"),
        ("Ff Ff", 3, "b1", "b0"),
        # being deleted already: left alone, and not counted
        ("Fsx Fs Fs", 1, "b2", "b1"),
    ],
)
def test_prune(specs: str, keep: int, kept: str, deleted: str) -> None:
    plan = planning.prune(items(specs), keep=keep)
    assert plan.keep == tuple(kept.split())
    assert plan.delete == tuple(deleted.split())


@pytest.mark.parametrize("keep", [1, 2, 3])
@pytest.mark.parametrize("specs", ["Fs Is Is Fs Is Is Fs Is", "Fs Is Ff Is Fs", "Fs Fs Is Is Is"])
def test_prune_never_leaves_a_kept_backup_without_its_chain(specs: str, keep: int) -> None:
    listed = items(specs)
    plan = planning.prune(listed, keep=keep)
    by = {i.name: i for i in listed}
    for name in plan.keep:
        previous = by[name].previous
        assert previous is None or previous in plan.keep, (name, previous)
    assert set(plan.keep) | set(plan.delete) == {i.name for i in listed}


def chain(length: int, *, n: int = 0, phase: vmbackups.VMBackupPhase = P.SUCCEEDED,
          live: bool = True) -> planning.Item:  # fmt: skip
    return planning.Item(name=f"b{n}", created=T0 + timedelta(hours=n), phase=phase,
                         chain_length=length, live=live)  # fmt: skip


@pytest.mark.parametrize(
    ("listed", "full_every", "running", "mode"),
    [
        ([], 7, True, "Full"),
        ([chain(1)], 1, True, "Full"),
        ([chain(1)], 7, True, "Incremental"),
        ([chain(6)], 7, True, "Incremental"),
        ([chain(7)], 7, True, "Full"),
        ([chain(1)], 7, False, "Full"),  # a stopped VM is copied offline
        ([chain(1, live=False)], 7, True, "Full"),  # an offline copy has no checkpoint
        ([chain(1), chain(2, n=1, phase=P.FAILED)], 7, True, "Full"),
        ([chain(1), chain(2, n=1, phase=P.RUNNING)], 7, True, "Incremental"),
    ],
)
def test_next_mode(listed: list[planning.Item], full_every: int, running: bool, mode: str) -> None:
    got = planning.next_mode(listed, full_every=full_every, vm_running=running)
    assert got.value == mode


def schedule(
    expr: str = "*/15 * * * *", *, status: dict[str, object] | None = None, **spec: object
) -> vmbackupschedules.VMBackupSchedule:
    return vmbackupschedules.VMBackupSchedule.model_validate(
        {
            "metadata": {"name": "nightly", "namespace": "ns"},
            "spec": {"vmName": "web", "schedule": expr, "keep": 2, **spec},
            "status": status,
        }
    )


def decide(
    s: vmbackupschedules.VMBackupSchedule, *, now: str, listed: list[planning.Item] | None = None
) -> deciding.Decision:
    return deciding.decide(
        deciding.Inputs(
            schedule=s, namespace="ns", name="nightly", created=T0,
            now=datetime.fromisoformat(now).replace(tzinfo=UTC),
            items=listed or [], vm_running=True,
        )
    )  # fmt: skip


def test_a_due_instant_creates_one_backup_named_for_it() -> None:
    d = decide(schedule(), now="2026-01-01T00:20:10")
    assert d.create is not None
    assert d.create["metadata"] == {
        "name": "nightly-202601010015",
        "namespace": "ns",
        "labels": {vmbackupschedules.LABEL_SCHEDULE: "nightly"},
    }
    assert d.create["spec"]["vmName"] == "web"
    assert d.create["spec"]["mode"] == "Full"
    assert d.last_run_at == datetime(2026, 1, 1, 0, 15, tzinfo=UTC)
    assert d.next_run_at == datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    assert (d.phase, d.ready.status, d.ready.reason) == ("Active", "True", "Scheduled")
    assert [e[1] for e in d.events] == ["BackupCreated"]


def test_nothing_is_due_between_instants() -> None:
    s = schedule(status={"lastRunAt": "2026-01-01T00:15:00Z"})
    d = decide(s, now="2026-01-01T00:29:59")
    assert d.create is None and d.events == ()
    assert d.next_run_at == datetime(2026, 1, 1, 0, 30, tzinfo=UTC)


def test_a_running_backup_skips_the_instant() -> None:
    d = decide(schedule(), now="2026-01-01T00:20", listed=[chain(1, phase=P.RUNNING)])
    assert d.create is None
    assert d.last_run_at == datetime(2026, 1, 1, 0, 15, tzinfo=UTC)
    assert [e[1] for e in d.events] == ["SkippedBusy"]


def test_suspended_creates_nothing_but_prunes() -> None:
    listed = items("Fs Fs Fs")
    d = decide(schedule(suspend=True), now="2026-01-02T00:00", listed=listed)
    assert d.create is None and d.phase == "Suspended"
    assert d.delete == ("b0",)


@pytest.mark.parametrize(
    ("expr", "words"),
    [("61 * * * *", "minute: 61 is outside 0-59"), ("0 0 31 2 *", "never fires")],
)
def test_an_invalid_schedule_is_a_condition(expr: str, words: str) -> None:
    d = decide(schedule(expr), now="2026-01-02T00:00")
    assert d.create is None and d.phase == "Invalid"
    assert (d.ready.status, d.ready.reason) == ("False", "InvalidSchedule")
    assert words in d.ready.message
    assert [e[:2] for e in d.events] == [("Warning", "InvalidSchedule")]
    again = decide(schedule(expr, status={"phase": "Invalid"}), now="2026-01-02T00:01")
    assert again.events == ()  # the Event is posted when it becomes Invalid, not each pass


@pytest.mark.parametrize(
    ("spec", "ok"),
    [
        ({"schedule": "@daily"}, True),
        ({"schedule": "* * * *"}, False),
        ({"schedule": "@daily", "keep": 0}, False),
        ({"schedule": "@daily", "keep": 3, "fullEvery": 4}, False),
    ],
)
def test_the_model_accepts_what_the_schema_accepts(spec: dict[str, object], ok: bool) -> None:
    body = {"vmName": "web", **spec}
    if ok:
        vmbackupschedules.VMBackupScheduleSpec.model_validate(body)
    else:
        with pytest.raises(pydantic.ValidationError):
            vmbackupschedules.VMBackupScheduleSpec.model_validate(body)


def test_item_of_reads_a_vmbackup_as_pruning_sees_it() -> None:
    from kubevisor.controller.vmbackupschedules import handlers

    obj = {
        "metadata": {"name": "n-1", "creationTimestamp": "2026-01-01T00:01:00Z",
                     "deletionTimestamp": "2026-01-01T00:05:00Z"},
        "spec": {"vmName": "web", "mode": "Incremental"},
        "status": {"phase": "Succeeded", "checkpoint": "kubevisor-n-1",
                   "chain": {"full": "n-0", "previous": "n-0", "length": 2}},
    }  # fmt: skip
    assert handlers.item_of(obj) == planning.Item(
        name="n-1", created=datetime(2026, 1, 1, 0, 1, tzinfo=UTC), phase=P.SUCCEEDED,
        previous="n-0", chain_length=2, live=True, deleting=True,
    )  # fmt: skip
    assert handlers.item_of({"metadata": {"name": "x"}, "spec": {}}) is None


def test_status_of_writes_the_decision() -> None:
    from kubevisor.controller.vmbackupschedules import handlers

    d = decide(schedule(), now="2026-01-01T00:20:10")
    st = handlers.status_of({"metadata": {"generation": 3}}, d, now=T0)
    assert st["phase"] == "Active" and st["observedGeneration"] == 3
    assert (st["lastRunAt"], st["nextRunAt"]) == ("2026-01-01T00:15:00Z", "2026-01-01T00:30:00Z")
    assert st["lastBackup"] == "nightly-202601010015" and "kept" not in st
    assert [c["reason"] for c in st["conditions"]] == ["Scheduled"]
