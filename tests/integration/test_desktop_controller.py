"""Desktop pools and claims against a real API server: sizing to min and spare, binding
(floating, dedicated), the per-user limit, allowed users, an exhausted pool, scale-in
that spares in-use desktops, logoff by policy and timeout, signed URLs, CEL.

The VM controller runs too (it places the desktops on two fake nodes: Leases this test
writes). There is no agent: the test plays its one part the pools depend on, reporting a
placed desktop VM Running (``_agent_reports_running``, with the agent's field manager).
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from kubevisor.api import (
    appservers,
    conditions,
    desktopclaims,
    desktoppools,
    displaytokens,
    groups,
    nodes,
)
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

NS = "desktops-test"
LEASE_NS = nodes.LEASE_NAMESPACE
G, V = groups.GROUP, groups.VERSION
NODES = {
    "dfake-a": {"cpu": 64, "memoryBytes": 64 * 2**30, "gpus": 0},
    "dfake-b": {"cpu": 64, "memoryBytes": 64 * 2**30, "gpus": 0},
}
TEMPLATE = {
    "cpu": {"cores": 1},
    "memory": "64Mi",
    "disks": [{"name": "root", "image": "tiny", "size": "1Gi"}],
    "nics": [{"name": "eth0", "network": "default"}],
}


def _wait(
    predicate: Callable[[], Any],
    *,
    timeout: float = 45,
    what: str,
    show: Callable[[], Any] | None = None,
) -> Any:
    return testing.wait_for(predicate, timeout=timeout, what=what, every=0.3, show=show)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


class Env:
    def __init__(self, cluster: Any) -> None:
        import kubernetes

        self.k = kubernetes
        self.custom = kubernetes.client.CustomObjectsApi(cluster.api)
        self.core = kubernetes.client.CoreV1Api(cluster.api)
        self.coord = kubernetes.client.CoordinationV1Api(cluster.api)

    def create(self, plural: str, kind: str, name: str, spec: dict[str, Any]) -> None:
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": kind,
            "metadata": {"name": name},
            "spec": spec,
        }
        self.custom.create_namespaced_custom_object(G, V, NS, plural, body)

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(G, V, NS, plural, name)
        except self.k.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def status(self, plural: str, name: str) -> dict[str, Any]:
        return dict((self.get(plural, name) or {}).get("status") or {})

    def cond(self, plural: str, name: str, type_: str) -> dict[str, Any]:
        for c in self.status(plural, name).get("conditions") or []:
            if c["type"] == type_:
                return dict(c)
        return {}

    def desktops(self, pool: str) -> list[dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(
            G, V, NS, "virtualmachines", label_selector=f"{groups.LABEL_POOL}={pool}"
        )["items"]
        return [vm for vm in items if not vm["metadata"].get("deletionTimestamp")]

    def names(self, pool: str) -> set[str]:
        return {vm["metadata"]["name"] for vm in self.desktops(pool)}

    def pool(self, template: str, **spec: Any) -> str:
        name = _name("pool")
        self.create(
            "desktoppools", "DesktopPool", name, {"templateRef": {"name": template}, **spec}
        )
        return name

    def claim(self, pool: str, user: str, **spec: Any) -> str:
        name = _name("claim")
        self.create(
            "desktopclaims",
            "DesktopClaim",
            name,
            {"poolRef": {"name": pool}, "user": user, **spec},
        )
        return name

    def delete(self, plural: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(G, V, NS, plural, name)

    def patch(self, plural: str, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(G, V, NS, plural, name, body)

    def agent_reports_running(self, pool: str, *, guest_ready: bool = True) -> None:
        """The agent's part: every placed desktop of ``pool`` reports Running once it
        carries the node label (what a real agent watches) — with GuestReady, as a real
        agent does once the guest prints its ready line, unless ``guest_ready`` is False —
        and a deleted one loses the agent's finalizer (this fake agent keeps nothing on a
        node to clean up)."""
        for vm in self.custom.list_namespaced_custom_object(
            G, V, NS, "virtualmachines", label_selector=f"{groups.LABEL_POOL}={pool}"
        )["items"]:
            st = vm.get("status") or {}
            meta = vm["metadata"]
            finalizers = meta.get("finalizers") or []
            if meta.get("deletionTimestamp") and groups.AGENT_FINALIZER in finalizers:
                self.custom.patch_namespaced_custom_object(
                    G, V, NS, "virtualmachines", meta["name"],
                    [{"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                     {"op": "replace", "path": "/metadata/finalizers",
                      "value": [f for f in finalizers if f != groups.AGENT_FINALIZER]}],
                    _content_type="application/json-patch+json",
                )  # fmt: skip
                continue
            placed = (meta.get("labels") or {}).get(groups.LABEL_NODE)
            has_guest = conditions.is_true(st.get("conditions") or [], "GuestReady")
            if (
                placed
                and not meta.get("deletionTimestamp")
                and (st.get("phase") != "Running" or has_guest is not guest_ready)
            ):
                guest = {"type": "GuestReady", "status": "True", "reason": "AsExpected",
                         "message": "the guest printed its ready line on the serial console",
                         "lastTransitionTime": _now()}  # fmt: skip
                body = {
                    "apiVersion": groups.API_VERSION,
                    "kind": "VirtualMachine",
                    "metadata": {"name": vm["metadata"]["name"], "namespace": NS},
                    "status": {"phase": "Running", "conditions": [guest] if guest_ready else []},
                }
                self.custom.patch_namespaced_custom_object_status(
                    G,
                    V,
                    NS,
                    "virtualmachines",
                    vm["metadata"]["name"],
                    body,
                    field_manager="kubevisor-agent",
                    force=True,
                    _content_type="application/apply-patch+yaml",
                )

    def events(self, name: str, reason: str) -> list[str]:
        items = self.core.list_namespaced_event(
            NS, field_selector=f"involvedObject.name={name}"
        ).items
        return [e.message for e in items if e.reason == reason]

    def key(self) -> bytes:
        secret = self.core.read_namespaced_secret(displaytokens.KEY_SECRET_NAME, LEASE_NS)
        return base64.b64decode(secret.data[displaytokens.KEY_SECRET_FIELD])


@pytest.fixture(scope="module")
def env(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(cluster)
    for ns in (NS, LEASE_NS):
        testing.ensure_namespace(e.core, ns)
    for name, cap in NODES.items():
        e.coord.create_namespaced_lease(
            LEASE_NS, testing.fake_node_lease(name, labels={}, capacity=cap)
        )
    logfile = tmp_path_factory.mktemp("desktops") / "controller.log"
    with testing.running_controller(cluster.kubeconfig, log=logfile, namespaces=[NS]):
        try:
            yield e
        finally:
            _teardown(e)


def _teardown(e: Env) -> None:
    """Remove every pool, claim and VM of the module and WAIT until they are gone, with
    the controller still running: the pools go first (so the controller stops creating
    desktops), then the claims, then the VMs. There is no agent to clear a VM's
    finalizer, so the test clears it. Leftover VMs would be placed against the next
    modules' nodes (the helm test once timed out behind them)."""

    def sweep() -> list[str]:
        left = []
        for plural in ("desktoppools", "desktopclaims", "virtualmachines"):
            for obj in e.custom.list_namespaced_custom_object(G, V, NS, plural)["items"]:
                name = obj["metadata"]["name"]
                left.append(f"{plural}/{name}")
                with contextlib.suppress(e.k.client.ApiException):  # gone meanwhile
                    e.patch(plural, name, {"metadata": {"finalizers": None}})
                    e.delete(plural, name)
        return left

    testing.wait_for(lambda: not sweep(), timeout=60, what="the module's pools, claims and "
                     "VMs gone", every=0.5, show=sweep)  # fmt: skip
    for name in NODES:
        e.coord.delete_namespaced_lease(name, LEASE_NS)


@pytest.fixture(scope="module")
def template(env: Env) -> str:
    name = _name("tmpl")
    env.create("vmtemplates", "VMTemplate", name, TEMPLATE)
    return name


def _ready_pool(env: Env, pool: str, count: int) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        env.agent_reports_running(pool)
        st = env.status("desktoppools", pool)
        return st if st.get("phase") == "Ready" and st.get("ready") == count else None

    return dict(
        _wait(
            ready,
            what=f"pool {pool} Ready with {count}",
            show=lambda: env.status("desktoppools", pool),
        )
    )


def _bound_message(env: Env, claim: str) -> str:
    cond = conditions.get_condition(env.status("desktopclaims", claim).get("conditions") or [],
                                    desktopclaims.BOUND)  # fmt: skip
    return str((cond or {}).get("message") or "")


def _bound(env: Env, pool: str, claim: str) -> dict[str, Any]:
    def bound() -> dict[str, Any] | None:
        env.agent_reports_running(pool)
        st = env.status("desktopclaims", claim)
        return st if st.get("phase") == "Bound" and st.get("vmName") and st.get("url") else None

    return dict(
        _wait(bound, what=f"claim {claim} Bound", show=lambda: env.status("desktopclaims", claim))
    )


def _reason(env: Env, claim: str, reason: str) -> dict[str, Any]:
    return dict(
        _wait(
            lambda: (c := env.cond("desktopclaims", claim, "Bound")).get("reason") == reason and c,
            what=f"claim {claim} Bound reason {reason}",
            show=lambda: env.status("desktopclaims", claim),
        )
    )


def _token(url: str) -> str:
    path = unquote(parse_qs(urlparse(url).query)["path"][0])
    return parse_qs(urlparse(path).query)[displaytokens.TOKEN_QUERY][0]


def test_pool_reaches_min_and_spare_as_linked_clones_it_owns(env: Env, template: str) -> None:
    pool = env.pool(template, min=2, max=4, spare=1)
    st = _ready_pool(env, pool, 2)
    assert (st["total"], st["claimed"], st["spare"]) == (2, 0, 2)
    obj = env.get("desktoppools", pool)
    assert obj is not None
    for vm in env.desktops(pool):
        assert vm["spec"]["templateRef"] == {"name": template}
        owner = vm["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "DesktopPool",
            pool,
            obj["metadata"]["uid"],
        )
    assert env.cond("desktoppools", pool, "Ready")["status"] == "True"


def test_claim_binds_with_a_signed_url_and_the_pool_keeps_a_spare(env: Env, template: str) -> None:
    pool = env.pool(template, min=1, max=3, spare=1)
    _ready_pool(env, pool, 1)
    claim = env.claim(pool, "alice@example.com", allowShadowing=True)
    st = _bound(env, pool, claim)
    vm = env.get("virtualmachines", st["vmName"])
    assert vm is not None
    assert vm["metadata"]["annotations"][desktoppools.ANNOTATION_CLAIM] == claim
    obj = env.get("desktopclaims", claim)
    assert obj is not None
    grant = displaytokens.verify(env.key(), _token(st["url"]), now=time.time())
    assert (grant.namespace, grant.claim, grant.claim_uid, grant.view_only) == (
        NS,
        claim,
        obj["metadata"]["uid"],
        False,
    )
    assert displaytokens.verify(env.key(), _token(st["viewUrl"]), now=time.time()).view_only
    assert st["tokenExpiresAt"] and st["boundAt"]
    # claimed 1 + spare 1: a second desktop appears and runs
    pst = _ready_pool(env, pool, 2)
    assert (pst["claimed"], pst["spare"]) == (1, 1)
    assert env.events(claim, "Bound")


def test_per_user_limit_and_not_allowed_users(env: Env, template: str) -> None:
    pool = env.pool(template, min=3, max=3, spare=0, perUserLimit=1, allowedUsers=["alice"])
    _ready_pool(env, pool, 3)
    first = env.claim(pool, "alice")
    _bound(env, pool, first)
    second = env.claim(pool, "alice")
    cond = _reason(env, second, "UserLimitReached")
    assert "perUserLimit is 1" in cond["message"]
    assert env.status("desktopclaims", second)["phase"] == "Pending"
    stranger = env.claim(pool, "mallory")
    _reason(env, stranger, "NotAllowed")
    assert env.status("desktopclaims", stranger)["phase"] == "Failed"
    _wait(lambda: env.events(stranger, "NotAllowed"), what="NotAllowed Event")
    # the limit frees up when the first claim goes
    env.delete("desktopclaims", first)
    _bound(env, pool, second)


def test_exhausted_pool_makes_the_claim_wait_then_binds(env: Env, template: str) -> None:
    pool = env.pool(template, min=0, max=1, spare=1, logoffPolicy="refresh")
    _ready_pool(env, pool, 1)
    first = env.claim(pool, "u1")
    held = _bound(env, pool, first)["vmName"]
    waiting = env.claim(pool, "u2")
    _reason(env, waiting, "PoolExhausted")
    _wait(
        lambda: "max of 1" in env.cond("desktoppools", pool, "Ready").get("message", ""),
        what="the pool says claims wait at max",
        show=lambda: env.status("desktoppools", pool),
    )
    env.delete("desktopclaims", first)
    st = _bound(env, pool, waiting)
    # refresh: the first user's desktop was deleted, the second got a fresh one
    assert st["vmName"] != held
    _wait(
        lambda: env.agent_reports_running(pool) or env.get("virtualmachines", held) is None,
        what="refreshed desktop gone",
    )
    _wait(lambda: env.get("desktopclaims", first) is None, what="claim finalized")


def test_dedicated_returns_the_same_desktop_with_keep(env: Env, template: str) -> None:
    pool = env.pool(template, min=0, max=3, spare=0, assignment="dedicated", logoffPolicy="keep")
    first = env.claim(pool, "carol")
    vm = _bound(env, pool, first)["vmName"]
    assert vm == desktoppools.desktop_name(pool, "carol")
    env.delete("desktopclaims", first)
    _wait(lambda: env.get("desktopclaims", first) is None, what="claim finalized")
    kept = env.get("virtualmachines", vm)
    assert kept is not None
    annotations = kept["metadata"]["annotations"]
    assert annotations[desktoppools.ANNOTATION_USER] == "carol"
    assert desktoppools.ANNOTATION_CLAIM not in annotations
    other = env.claim(pool, "dave")
    assert _bound(env, pool, other)["vmName"] != vm
    again = env.claim(pool, "carol")
    assert _bound(env, pool, again)["vmName"] == vm


def test_scale_in_spares_the_desktop_in_use(env: Env, template: str) -> None:
    pool = env.pool(template, min=3, max=3, spare=0)
    _ready_pool(env, pool, 3)
    claim = env.claim(pool, "erin")
    used = _bound(env, pool, claim)["vmName"]
    env.patch("desktoppools", pool, {"spec": {"min": 0}})
    _wait(
        lambda: env.names(pool) == {used},
        what="scale-in to the used desktop",
        show=lambda: env.names(pool),
    )
    _wait(lambda: env.events(pool, "ScalingIn"), what="ScalingIn Event")
    assert env.status("desktopclaims", claim)["phase"] == "Bound"


def test_max_session_timeout_releases_the_claim(env: Env, template: str) -> None:
    pool = env.pool(template, min=1, max=2, spare=0, maxSessionSeconds=3, logoffPolicy="keep")
    _ready_pool(env, pool, 1)
    claim = env.claim(pool, "frank")
    vm = _bound(env, pool, claim)["vmName"]
    _wait(
        lambda: env.status("desktopclaims", claim).get("phase") == "Released",
        what="claim Released after maxSessionSeconds",
    )
    st = env.status("desktopclaims", claim)
    assert st.get("url") is None and st.get("vmName") is None and st.get("releasedAt")
    assert env.cond("desktopclaims", claim, "Bound")["reason"] == "SessionTimeout"
    # keep: the desktop stays, free again
    _wait(
        lambda: (
            desktoppools.ANNOTATION_CLAIM
            not in (
                (env.get("virtualmachines", vm) or {}).get("metadata", {}).get("annotations") or {}
            )
        ),
        what="desktop released",
    )


def test_missing_template_fails_the_pool_and_a_missing_pool_the_claim(env: Env) -> None:
    pool = env.pool("no-such-template", min=1, max=1)
    cond = _wait(
        lambda: (
            (c := env.cond("desktoppools", pool, "Ready")).get("reason") == "TemplateNotFound" and c
        ),
        what="TemplateNotFound",
    )
    assert "no-such-template" in cond["message"]
    assert env.names(pool) == set()
    claim = env.claim("no-such-pool", "gina")
    _reason(env, claim, "PoolNotFound")


def test_cel_refuses_changing_a_claims_user(env: Env, template: str) -> None:
    pool = env.pool(template, min=0, max=1, spare=0)
    claim = env.claim(pool, "hank")
    with pytest.raises(env.k.client.ApiException) as exc:
        env.patch("desktopclaims", claim, {"spec": {"user": "ivan"}})
    assert exc.value.status == 422
    assert "cannot change" in exc.value.body


def test_application_pool_places_sessions_least_loaded_with_its_key(
    env: Env, template: str
) -> None:
    """CEL first; then two servers, three claims spread over them (least-loaded), the
    sessions counted per server, the servers referencing the pool's public-key Secret."""
    for bad in ({"mode": "Application"}, {"application": "xterm"}):
        with pytest.raises(env.k.client.ApiException) as exc:
            env.pool(template, max=1, **bad)
        assert exc.value.status == 422 and "application is required" in exc.value.body
    app_template = _name("tmpl")  # the keys reach a guest on its kernel command line
    boot = {"kernel": "/boot/vmlinuz", "cmdline": "console=ttyS0"}
    env.create("vmtemplates", "VMTemplate", app_template, {**TEMPLATE, "boot": boot})
    pool = env.pool(app_template, min=2, max=2, spare=0, mode="Application", application="xterm")
    early = env.claim(pool, "dan")  # made at once: the servers run before their sshd is up

    def booting() -> Any:
        env.agent_reports_running(pool, guest_ready=False)
        st = env.status("desktopclaims", early)
        return "sshd is not up yet" in _bound_message(env, early) and st

    st = _wait(booting, what="the early claim waiting for a server's sshd",
               show=lambda: env.status("desktopclaims", early))  # fmt: skip
    assert st["phase"] == "Pending" and st.get("vmName") and not st.get("url"), st
    env.delete("desktopclaims", early)
    _ready_pool(env, pool, 2)
    claims = [env.claim(pool, user) for user in ("ann", "ben", "cat")]
    placed = [_bound(env, pool, c)["vmName"] for c in claims]
    assert sorted(placed.count(s) for s in set(placed)) == [1, 2], placed
    key = appservers.pool_key_secret(pool)
    for vm in env.desktops(pool):
        assert vm["spec"]["access"]["sshKeySecret"] == key
    public = env.core.read_namespaced_secret(key, NS).data[appservers.PUBLIC_KEY_FIELD]
    assert base64.b64decode(public).startswith(b"ssh-ed25519 ")

    def counted() -> Any:
        st = env.status("desktoppools", pool)
        return sorted(d.get("sessions", 0) for d in st.get("desktops") or []) == [1, 2] and st

    _wait(counted, what="sessions per server in the pool status",
          show=lambda: env.status("desktoppools", pool))  # fmt: skip
    with pytest.raises(env.k.client.ApiException) as exc:
        env.patch("desktoppools", pool, {"spec": {"mode": "Desktop", "application": None}})
    assert exc.value.status == 422


def test_disconnected_timeout_reads_the_gateways_session_report(env: Env, template: str) -> None:
    pool = env.pool(template, min=1, max=1, spare=0, disconnectedTimeoutSeconds=2)
    _ready_pool(env, pool, 1)
    claim = env.claim(pool, "jane")
    _bound(env, pool, claim)
    # what the display gateway writes (its own field manager): the viewer left
    body = {
        "apiVersion": groups.API_VERSION,
        "kind": "DesktopClaim",
        "metadata": {"name": claim, "namespace": NS},
        "status": {"session": {"connected": False, "lastDisconnectedAt": _now()}},
    }
    env.custom.patch_namespaced_custom_object_status(
        G,
        V,
        NS,
        "desktopclaims",
        claim,
        body,
        field_manager=desktopclaims.GATEWAY_FIELD_MANAGER,
        force=True,
        _content_type="application/apply-patch+yaml",
    )
    _reason(env, claim, "DisconnectedTimeout")
    st = env.status("desktopclaims", claim)
    assert st["phase"] == "Released"
    assert st["session"]["connected"] is False, "the controller left the gateway's field alone"
    _wait(lambda: env.events(claim, "LoggedOff"), what="LoggedOff Event")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def test_cli_desktop_claim_prints_the_url(env: Env, template: str, cluster: Any) -> None:
    pool = env.pool(template, min=1, max=1, spare=1)
    _ready_pool(env, pool, 1)
    env.agent_reports_running(pool)
    cmd = [sys.executable, "-m", "kubevisor.cli.main", f"--kubeconfig={cluster.kubeconfig}",
           "desktop", "claim", pool, "--user", "kim", "-n", NS, "--timeout", "60"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    url = proc.stdout.splitlines()[0]
    grant = displaytokens.verify(env.key(), _token(url), now=time.time())
    assert grant.namespace == NS and grant.claim.startswith(f"{pool}-")
    # a user the pool refuses: the command fails with the controller's sentence
    env.patch("desktoppools", pool, {"spec": {"allowedUsers": ["kim"]}})
    cmd[cmd.index("kim")] = "lee"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and "NotAllowed" in proc.stderr, proc.stderr
