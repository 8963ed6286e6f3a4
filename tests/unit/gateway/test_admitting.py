"""Admission decisions (``gateway/admitting``): a verified grant admits a browser only to a
claim that still exists with the same UID, is Bound to a VM, and whose VM publishes a VNC
display; every refusal names its reason."""

from __future__ import annotations

import pytest

from kubevisor.api.displaytokens import Grant
from kubevisor.gateway import admitting
from kubevisor.gateway.admitting import ClaimFacts, DisplayFacts, Refusal, Refused, Target

pytestmark = pytest.mark.unit

GRANT = Grant(namespace="ns", claim="alice", claim_uid="uid-1", expires_at=100, nonce="n")
BOUND = ClaimFacts(uid="uid-1", phase="Bound", vm_name="desk-3")
SHOWN = DisplayFacts(node_name="node-1", type="vnc", host="10.77.0.11", port=5901)


def test_a_bound_claim_with_a_display_admits_to_that_display() -> None:
    assert admitting.decide(GRANT, BOUND, SHOWN) == Target(
        namespace="ns", claim="alice", vm_name="desk-3", node_name="node-1",
        host="10.77.0.11", port=5901, view_only=False,
    )  # fmt: skip


def test_a_view_only_grant_gives_a_view_only_target() -> None:
    viewer = Grant(**{**GRANT.__dict__, "view_only": True})
    target = admitting.decide(viewer, BOUND, SHOWN)
    assert isinstance(target, Target) and target.view_only


@pytest.mark.parametrize(
    ("claim", "display", "reason"),
    [
        (None, None, Refusal.CLAIM_NOT_FOUND),
        (ClaimFacts(uid="uid-2", phase="Bound", vm_name="desk-3"), SHOWN, Refusal.CLAIM_REPLACED),
        (ClaimFacts(uid="uid-1", phase="Pending", vm_name=None), None, Refusal.CLAIM_NOT_BOUND),
        (ClaimFacts(uid="uid-1", phase="Released", vm_name="desk-3"), SHOWN,
         Refusal.CLAIM_NOT_BOUND),
        (ClaimFacts(uid="uid-1", phase=None, vm_name=None), None, Refusal.CLAIM_NOT_BOUND),
        (ClaimFacts(uid="uid-1", phase="Bound", vm_name=None), None, Refusal.CLAIM_NOT_BOUND),
        (BOUND, None, Refusal.VM_NOT_FOUND),
        (BOUND, DisplayFacts(node_name="node-1", type=None, host=None, port=None),
         Refusal.NO_DISPLAY),
        (BOUND, DisplayFacts(node_name="node-1", type="spice", host="h", port=1),
         Refusal.NO_DISPLAY),
        (BOUND, DisplayFacts(node_name="node-1", type="vnc", host=None, port=5900),
         Refusal.NO_DISPLAY),
        (BOUND, DisplayFacts(node_name="node-1", type="vnc", host="h", port=0),
         Refusal.NO_DISPLAY),
    ],
    ids=[
        "claim-gone", "claim-recreated", "pending", "released", "no-phase", "bound-without-vm",
        "vm-gone", "no-display-yet", "not-vnc", "no-host", "port-0",
    ],
)  # fmt: skip
def test_refusals(claim: ClaimFacts | None, display: DisplayFacts | None, reason: Refusal) -> None:
    decision = admitting.decide(GRANT, claim, display)
    assert isinstance(decision, Refused)
    assert decision.reason is reason
    assert "ns/" in decision.message  # the sentence names the object


def test_standing_of_a_bound_claim_is_its_vm() -> None:
    assert admitting.claim_standing(GRANT, BOUND) == "desk-3"


def test_token_refusals_keep_the_contract_names() -> None:
    assert {r.value for r in Refusal} >= {"Malformed", "BadSignature", "Expired"}


SERVER = DisplayFacts(
    node_name="node-2", type=admitting.SSH, host="10.0.0.5", port=22, application="xterm",
    pool_uid="pool-uid",
)  # fmt: skip


def test_an_application_claim_admits_to_its_servers_sshd_with_the_command() -> None:
    """...and the server's pool, whose derived host key the session's ssh checks."""
    assert admitting.decide(GRANT, BOUND, SERVER) == Target(
        namespace="ns", claim="alice", vm_name="desk-3", node_name="node-2",
        host="10.0.0.5", port=22, view_only=False, application="xterm", pool_uid="pool-uid",
    )  # fmt: skip


def test_an_application_server_without_an_address_is_no_display() -> None:
    noaddr = DisplayFacts(
        node_name="node-2", type=admitting.SSH, host=None, port=22, application="xterm"
    )
    refused = admitting.decide(GRANT, BOUND, noaddr)
    assert isinstance(refused, Refused) and refused.reason is Refusal.NO_DISPLAY
