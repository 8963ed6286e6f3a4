"""Admission: whether a verified grant lets a browser in, and to which display (pure).

The token's signature and expiry are :mod:`kubevisor.api.displaytokens`' rule; this module
adds what only the API server knows: the claim named in the grant must still exist with
the same UID (a deleted and re-created claim of the same name does not inherit old
tokens), be ``Bound`` to a VM, and that VM must publish a VNC display on a node. Facts are
gathered first into small frozen objects (``ClaimFacts``, ``DisplayFacts``) by
``gateway.kube``; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kubevisor.api import desktopclaims, displaytokens


class Refusal(StrEnum):
    """Why the gateway refuses a browser (logged, and the HTTP 403 body)."""

    MALFORMED = displaytokens.Refusal.MALFORMED.value
    BAD_SIGNATURE = displaytokens.Refusal.BAD_SIGNATURE.value
    EXPIRED = displaytokens.Refusal.EXPIRED.value
    MISSING_TOKEN = "MissingToken"
    REPLAYED = "Replayed"
    CLAIM_NOT_FOUND = "ClaimNotFound"
    CLAIM_REPLACED = "ClaimReplaced"
    CLAIM_NOT_BOUND = "ClaimNotBound"
    VM_NOT_FOUND = "VMNotFound"
    NO_DISPLAY = "NoDisplay"


@dataclass(frozen=True)
class ClaimFacts:
    """What the API server says about the claim a grant names."""

    uid: str
    phase: str | None
    vm_name: str | None
    pool: str | None = None
    """The DesktopPool it names (the gateway reads the pool's mode and application)."""


@dataclass(frozen=True)
class DisplayFacts:
    """What the API server says about the claim's VM: its node and VNC endpoint, or (an
    application server) its sshd and the application to run there."""

    node_name: str | None
    type: str | None
    host: str | None
    port: int | None
    application: str | None = None
    """Set for an Application pool's server: the command a session runs; host and port
    are then the server's sshd (``type`` :data:`SSH`)."""
    tap: str | None = None
    """Application server reached at its IPv6 link-local address: the tap whose bridge
    scopes it (``sshtunnel.target_of``)."""
    pool_uid: str | None = None
    """Application server: the UID of the DesktopPool that owns it, from which its host
    key is derived (``appservers.host_key``)."""


#: DisplayFacts.type of an application server (the gateway makes the display itself).
SSH = "ssh"


@dataclass(frozen=True)
class Target:
    """Where an admitted browser's websocket goes, and whether it may type."""

    namespace: str
    claim: str
    vm_name: str
    node_name: str | None
    host: str
    port: int
    view_only: bool
    application: str | None = None
    """Published application: host:port is the server's sshd; the gateway runs this
    command there on a display of the session's own (``gateway.publishing``)."""
    tap: str | None = None
    """host is a link-local address on the bridge of this tap (``Dialer.open_on_bridge``)."""
    pool_uid: str | None = None
    """Published application: the server's pool, whose derived host key ssh checks."""


@dataclass(frozen=True)
class Refused:
    """A refusal with the sentence the gateway logs."""

    reason: Refusal
    message: str


def claim_standing(grant: displaytokens.Grant, claim: ClaimFacts | None) -> Refused | str:
    """The VM name the grant's claim is bound to, or why it no longer admits anyone.

    Used at admission and again while a session runs (a claim that ends closes it).
    """
    where = f"{grant.namespace}/{grant.claim}"
    if claim is None:
        return Refused(Refusal.CLAIM_NOT_FOUND, f"DesktopClaim {where} does not exist")
    if claim.uid != grant.claim_uid:
        return Refused(
            Refusal.CLAIM_REPLACED,
            f"DesktopClaim {where} was re-created (uid {claim.uid}, token for {grant.claim_uid})",
        )
    if claim.phase != desktopclaims.DesktopClaimPhase.BOUND.value or not claim.vm_name:
        return Refused(
            Refusal.CLAIM_NOT_BOUND,
            f"DesktopClaim {where} is {claim.phase or 'without a phase'}, not Bound to a VM",
        )
    return claim.vm_name


def decide(
    grant: displaytokens.Grant, claim: ClaimFacts | None, display: DisplayFacts | None
) -> Target | Refused:
    """Admit ``grant`` to its claim's VM display, or refuse with a reason and a sentence.

    Order: the claim (exists, same UID, Bound with a VM), then the VM (exists, VNC display
    with host and port). Replay is the caller's last check (:mod:`gateway.replays`), made
    only once everything else passed, so a browser early for a not-yet-bound claim does not
    burn its token.
    """
    standing = claim_standing(grant, claim)
    if isinstance(standing, Refused):
        return standing
    vm_name = standing
    if display is None:
        return Refused(
            Refusal.VM_NOT_FOUND,
            f"VirtualMachine {grant.namespace}/{vm_name} of the claim does not exist",
        )
    if display.application is not None:
        if display.type != SSH or display.host is None or not display.port:
            return Refused(
                Refusal.NO_DISPLAY,
                f"application server {grant.namespace}/{vm_name} reports no address (yet)",
            )
        return Target(
            namespace=grant.namespace,
            claim=grant.claim,
            vm_name=vm_name,
            node_name=display.node_name,
            host=display.host,
            port=display.port,
            view_only=grant.view_only,
            application=display.application,
            tap=display.tap,
            pool_uid=display.pool_uid,
        )
    if display.type != "vnc" or display.host is None or not display.port:
        return Refused(
            Refusal.NO_DISPLAY,
            f"VirtualMachine {grant.namespace}/{vm_name} publishes no VNC display (yet)",
        )
    return Target(
        namespace=grant.namespace,
        claim=grant.claim,
        vm_name=vm_name,
        node_name=display.node_name,
        host=display.host,
        port=display.port,
        view_only=grant.view_only,
    )
