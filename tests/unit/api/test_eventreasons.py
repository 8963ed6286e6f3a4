"""The table of every Event (api/eventreasons): it covers every phase and every
condition reason, and every reason that means a failure is a Warning."""

from __future__ import annotations

import pytest

from kubevisor.api import docgen, eventreasons, health, kinds
from kubevisor.api.eventreasons import PhaseEvent

pytestmark = pytest.mark.unit

#: The kinds' phase enums, as the health rules list them (their own coverage test checks
#: each is complete).
PHASE_ENUMS = {rules.kind: set(rules.phases) for rules in health.RULES}


@pytest.mark.parametrize("kind", sorted(PHASE_ENUMS))
def test_every_phase_of_every_kind_has_an_event_or_a_reason_for_none(kind: str) -> None:
    table = eventreasons.PHASES[kind]
    assert set(table) == PHASE_ENUMS[kind]
    for phase, entry in table.items():
        if isinstance(entry, PhaseEvent):
            assert entry.reasons, phase
            assert entry.by in (eventreasons.CONTROLLER, eventreasons.AGENT, eventreasons.OBSERVER)
            for reason in entry.reasons:
                assert reason in eventreasons.TYPES, (kind, phase, reason)
        else:
            assert entry in eventreasons.NO_EVENT, (kind, phase)


def test_the_table_has_every_kind() -> None:
    assert set(eventreasons.PHASES) == {k.kind for k in kinds.KINDS} == set(PHASE_ENUMS)


@pytest.mark.parametrize("enum", eventreasons.REASON_ENUMS, ids=lambda e: e.__name__)
def test_every_condition_reason_has_a_type(enum: type) -> None:
    for member in enum:
        assert str(member) in eventreasons.TYPES, member


@pytest.mark.parametrize("rules", health.RULES, ids=lambda r: r.kind)
def test_every_reason_that_degrades_a_kind_is_a_warning(rules: health.Rules) -> None:
    for reason in rules.degraded:
        assert eventreasons.TYPES[reason] is eventreasons.EventType.WARNING, (rules.kind, reason)


def test_a_reason_has_one_type_across_enums() -> None:
    """ "NodeLost" is a VM's, a Migration's and a VMBackup's reason: one type for all."""
    for enum in eventreasons.REASON_ENUMS:
        for member in enum:
            want = "Normal" if member in eventreasons.NORMAL_REASONS else "Warning"
            assert eventreasons.TYPES[str(member)] == want, member


def test_failed_phases_are_warnings() -> None:
    for kind, table in eventreasons.PHASES.items():
        entry = table.get("Failed")
        if isinstance(entry, PhaseEvent):
            for reason in entry.reasons:
                assert eventreasons.TYPES[reason] == "Warning", (kind, reason)


@pytest.mark.parametrize(
    ("old", "new", "by", "want"),
    [
        ("Scheduled", "Starting", eventreasons.AGENT, ("Normal", "Starting")),
        ("Starting", "Running", eventreasons.OBSERVER, ("Normal", "Running")),
        ("Running", "Failed", eventreasons.OBSERVER, ("Warning", "Failed")),
        ("Running", "Unknown", eventreasons.OBSERVER, ("Warning", "Unknown")),
        # the VM handler posts Scheduled itself, with the node
        ("Pending", "Scheduled", eventreasons.OBSERVER, None),
        ("Running", "Stopping", eventreasons.OBSERVER, None),  # transient
        (None, "Running", eventreasons.OBSERVER, None),  # not seen change
        ("Running", "Running", eventreasons.OBSERVER, None),
    ],
)
def test_phase_event(old: str | None, new: str, by: str, want: tuple[str, str] | None) -> None:
    assert eventreasons.phase_event("VirtualMachine", old, new, by=by) == want


def test_type_of_falls_back_to_the_callers_choice_only_for_unknown_reasons() -> None:
    assert eventreasons.type_of("TemplateNotFound", default="Normal") == "Warning"
    assert eventreasons.type_of("ClusterLimitReached", default="Warning") == "Normal"
    assert eventreasons.type_of("SomethingNew", default="Warning") == "Warning"


def test_every_reason_enum_of_the_api_is_in_the_table() -> None:
    """A new ``...Reason`` enum (docgen finds them all) must be listed here too."""
    assert set(docgen.reason_enums()) == set(eventreasons.REASON_ENUMS)
