"""The Migration reconciler against a real API server and controller process. Nodes are
fake (Leases and Node objects this test writes) and the TEST plays both agents: it writes
the VM's agent status (field manager kubevisor-agent) and the Migration's status.source /
status.target under the agents' own field managers (``migrations.SOURCE_FIELD_MANAGER``,
``TARGET_FIELD_MANAGER``), as the real agents do. No libvirt, no guest: what is proven
here is the controller's side (phases, limits, refusals, the VM's node move, cleanup
order, finalizer, restart)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kubevisor.api import groups, migrations, nodes, vmbackups
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration

NS = "mig-test"
LEASE_NS = nodes.LEASE_NAMESPACE
G, V = groups.GROUP, groups.VERSION
GiB = 2**30
SRC = "mc-a"
#: node -> (memory, networks, rtt from the source in ms)
NODES: dict[str, tuple[int, tuple[str, ...], float]] = {
    SRC: (64 * GiB, ("default",), 0.0),
    "mc-b": (8 * GiB, ("default",), 0.5),
    "mc-far": (8 * GiB, ("default",), 50.0),
    "mc-nonet": (8 * GiB, ("other",), 0.5),
    "mc-small": (32 * 2**20, ("default",), 0.5),
    "mc-cord": (8 * GiB, ("default",), 0.5),
    "mc-lost": (8 * GiB, ("default",), 0.5),
}
MACHINE = {
    "cpu": {"cores": 1},
    "memory": "64Mi",
    "disks": [{"name": "root", "image": "tiny", "size": "1Gi"}],
    "nics": [{"name": "eth0", "network": "default"}],
    "nodeSelector": {"pool": "mig"},
}
POLICY = {"allowBlockCopy": True}
FINAL = {"Succeeded", "Failed", "Cancelled"}


def _lease(name: str) -> dict[str, Any]:
    memory, networks, _ = NODES[name]
    rtts = {n: rtt for n, (_, _, rtt) in NODES.items() if n != SRC} if name == SRC else {SRC: 0.5}
    body = nodes.lease_body(
        node=name,
        labels={"pool": "mig"},
        capacity=nodes.Capacity(
            cpu=64,
            memory_bytes=memory,
            networks=networks,
            migration_uri=f"qemu+tcp://{name}/system",
            cpu_models=("qemu64",),
            host_cpu_model="qemu64",
        ),
        segments=(),
        now=datetime.now(UTC),
        duration_s=3600,
        rtts=rtts,
    )
    return body


class Env:
    def __init__(self, cluster: Any, logdir: Path) -> None:
        import kubernetes

        self.cluster = cluster
        self.logdir = logdir
        self.custom = kubernetes.client.CustomObjectsApi(cluster.api)
        self.core = kubernetes.client.CoreV1Api(cluster.api)
        self.coord = kubernetes.client.CoordinationV1Api(cluster.api)
        self._stack = contextlib.ExitStack()
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        self._stack.enter_context(
            testing.running_controller(
                self.cluster.kubeconfig,
                log=self.logdir / f"controller-{self.runs}.log",
                namespaces=[NS],
            )
        )

    def stop(self) -> None:
        self._stack.close()

    # -- VMs ------------------------------------------------------------------------
    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        import kubernetes

        try:
            return dict(self.custom.get_namespaced_custom_object(G, V, NS, plural, name))
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def vm(self, name: str) -> dict[str, Any]:
        """A VM placed on the source and Running there (the agent's report written)."""
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": MACHINE,
        }
        self.custom.create_namespaced_custom_object(G, V, NS, "virtualmachines", body)
        testing.wait_for(
            lambda: (
                ((self.get("virtualmachines", name) or {}).get("status") or {}).get("nodeName")
                == SRC
            ),
            timeout=30,
            what=f"VM {name} placed on {SRC}",
        )
        self._apply(
            "virtualmachines", "VirtualMachine", name, {"phase": "Running"}, "kubevisor-agent"
        )
        return testing.wait_for(
            lambda: (
                self.get("virtualmachines", name)
                if ((self.get("virtualmachines", name) or {}).get("metadata") or {})
                .get("labels", {})
                .get(groups.LABEL_NODE)
                == SRC
                else None
            ),
            timeout=30,
            what=f"VM {name} labelled",
        )

    def _apply(self, plural: str, kind: str, name: str, status: dict[str, Any], fm: str) -> None:
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": kind,
            "metadata": {"name": name, "namespace": NS},
            "status": status,
        }
        self.custom.patch_namespaced_custom_object_status(
            G,
            V,
            NS,
            plural,
            name,
            body,
            field_manager=fm,
            force=True,
            _content_type="application/apply-patch+yaml",
        )

    # -- Migrations -----------------------------------------------------------------
    def migrate(self, name: str, vm: str, target: str | None = None) -> None:
        spec: dict[str, Any] = {"vmName": vm, "policy": POLICY}
        if target is not None:
            spec["targetNode"] = target
        body = {
            "apiVersion": groups.API_VERSION,
            "kind": "Migration",
            "metadata": {"name": name},
            "spec": spec,
        }
        self.custom.create_namespaced_custom_object(G, V, NS, "migrations", body)

    def mstatus(self, name: str) -> dict[str, Any]:
        return dict((self.get("migrations", name) or {}).get("status") or {})

    def phase(self, name: str, want: str, timeout: float = 30) -> dict[str, Any]:
        return testing.wait_for(
            lambda: self.mstatus(name) if self.mstatus(name).get("phase") == want else None,
            timeout=timeout,
            what=f"Migration {name} {want} (now {self.mstatus(name).get('phase')})",
        )

    def scheduled(self, name: str) -> dict[str, Any]:
        def cond() -> dict[str, Any] | None:
            for c in self.mstatus(name).get("conditions") or []:
                if c["type"] == "Scheduled" and c["status"] == "False":
                    return dict(c)
            return None

        return testing.wait_for(cond, timeout=30, what=f"Migration {name} Scheduled=False")

    def source(self, name: str, state: str, **extra: Any) -> None:
        self._apply(
            "migrations",
            "Migration",
            name,
            {"source": {"node": SRC, "state": state, **extra}},
            migrations.SOURCE_FIELD_MANAGER,
        )

    def target(self, name: str, node: str, state: str, **extra: Any) -> None:
        self._apply(
            "migrations",
            "Migration",
            name,
            {"target": {"node": node, "state": state, **extra}},
            migrations.TARGET_FIELD_MANAGER,
        )

    def events(self, name: str) -> list[str]:
        items = self.core.list_namespaced_event(
            NS, field_selector=f"involvedObject.name={name}"
        ).items
        return [e.reason for e in items]

    def vm_labels(self, name: str) -> dict[str, str]:
        return dict(
            ((self.get("virtualmachines", name) or {}).get("metadata") or {}).get("labels") or {}
        )


@pytest.fixture(scope="module")
def env(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(cluster, tmp_path_factory.mktemp("migctl"))
    for ns in (NS, LEASE_NS):
        testing.ensure_namespace(e.core, ns)
    for name in NODES:
        e.coord.create_namespaced_lease(LEASE_NS, _lease(name))
        e.core.create_node(
            {
                "metadata": {"name": name, "labels": {"pool": "mig"}},
                "spec": {"unschedulable": name == "mc-cord"},
            }
        )
    e.start()
    try:
        yield e
    finally:
        e.stop()
        for plural in ("migrations", "vmbackups", "virtualmachines"):
            for obj in e.custom.list_namespaced_custom_object(G, V, NS, plural)["items"]:
                name = obj["metadata"]["name"]
                e.custom.patch_namespaced_custom_object(
                    G, V, NS, plural, name, {"metadata": {"finalizers": None}}
                )
                with contextlib.suppress(Exception):
                    e.custom.delete_namespaced_custom_object(G, V, NS, plural, name)
        for name in NODES:
            e.coord.delete_namespaced_lease(name, LEASE_NS)
            e.core.delete_node(name)


def test_happy_path_moves_the_vm(env: Env) -> None:
    env.vm("hp")
    env.migrate("hp-m", "hp", target="mc-b")
    st = env.phase("hp-m", "PreparingTarget")
    assert (st["sourceNode"], st["targetNode"]) == (SRC, "mc-b")
    mig = env.get("migrations", "hp-m") or {}
    assert groups.FINALIZER in mig["metadata"]["finalizers"]
    testing.wait_for(
        lambda: env.vm_labels("hp").get(groups.LABEL_MIGRATION_TARGET) == "mc-b",
        timeout=30,
        what="VM migration-target label",
    )
    env.target("hp-m", "mc-b", "Ready")
    env.phase("hp-m", "TargetReady")
    env.source("hp-m", "Migrating")
    env.phase("hp-m", "Running")
    # the VM stays on its source while the copy runs
    assert ((env.get("virtualmachines", "hp") or {}).get("status") or {})["nodeName"] == SRC
    env.target("hp-m", "mc-b", "Ready", domainActive=True)
    env.source("hp-m", "Completed")
    st = env.phase("hp-m", "Succeeded")
    assert [t["phase"] for t in st["phaseTransitions"]] == [
        "Pending",
        "Scheduling",
        "PreparingTarget",
        "TargetReady",
        "Running",
        "Succeeded",
    ]
    assert st.get("completedAt")
    vm = testing.wait_for(
        lambda: (
            (env.get("virtualmachines", "hp") or {})
            if ((env.get("virtualmachines", "hp") or {}).get("status") or {}).get("nodeName")
            == "mc-b"
            else None
        ),
        timeout=30,
        what="VM nodeName moved to mc-b",
    )
    assert vm["metadata"]["labels"][groups.LABEL_NODE] == "mc-b"
    assert groups.LABEL_MIGRATION_TARGET not in vm["metadata"]["labels"]
    assert vm["status"]["migration"]["phase"] == "Succeeded"
    assert vm["status"]["migration"]["name"] == "hp-m"
    testing.wait_for(lambda: "Succeeded" in env.events("hp-m"), timeout=30, what="Succeeded Event")
    testing.wait_for(lambda: "Migrated" in env.events("hp"), timeout=30, what="Migrated Event")


@pytest.mark.parametrize(
    ("target", "reason", "phrase"),
    [
        ("mc-far", "RTTTooHigh", "is 50 ms, over policy.maxRTTMs 10 ms"),
        ("mc-nonet", "NetworkUnavailable", "node mc-nonet lacks network"),
        ("mc-small", "InsufficientCapacity", "node mc-small"),
        ("mc-cord", "TargetCordoned", "node mc-cord is cordoned"),
    ],
)
def test_refusals_say_why(env: Env, target: str, reason: str, phrase: str) -> None:
    vm = f"rf-{target}"
    env.vm(vm)
    env.migrate(f"{vm}-m", vm, target=target)
    cond = env.scheduled(f"{vm}-m")
    assert cond["reason"] == reason, cond
    assert phrase in cond["message"], cond["message"]
    assert env.mstatus(f"{vm}-m")["phase"] == "Pending"
    testing.wait_for(lambda: reason in env.events(f"{vm}-m"), timeout=30, what="refusal Event")
    env.custom.delete_namespaced_custom_object(G, V, NS, "migrations", f"{vm}-m")


def test_cancel_mid_way_cleans_up_in_order(env: Env) -> None:
    env.vm("cx")
    env.migrate("cx-m", "cx", target="mc-b")
    env.phase("cx-m", "PreparingTarget")
    env.target("cx-m", "mc-b", "Ready")
    env.source("cx-m", "Migrating")
    env.phase("cx-m", "Running")
    env.custom.patch_namespaced_custom_object(
        G, V, NS, "migrations", "cx-m", {"spec": {"cancel": True}}
    )
    env.source("cx-m", "Aborted", reason="Cancelled", message="aborted on request")
    env.phase("cx-m", "Cancelled")
    # the target has not said CleanedUp: its label stays, so nothing else lands there
    assert env.vm_labels("cx").get(groups.LABEL_MIGRATION_TARGET) == "mc-b"
    env.target("cx-m", "mc-b", "CleanedUp")
    testing.wait_for(
        lambda: groups.LABEL_MIGRATION_TARGET not in env.vm_labels("cx"),
        timeout=30,
        what="migration-target label dropped after CleanedUp",
    )
    vm = env.get("virtualmachines", "cx") or {}
    assert vm["status"]["nodeName"] == SRC
    # the record stays, with the final phase (the agent's guard lets the source run it)
    assert vm["status"]["migration"] == {
        "name": "cx-m",
        "sourceNode": SRC,
        "targetNode": "mc-b",
        "phase": "Cancelled",
    }
    assert vm["metadata"]["labels"][groups.LABEL_NODE] == SRC


def test_target_lease_lost_fails(env: Env) -> None:
    env.vm("tl")
    env.migrate("tl-m", "tl", target="mc-lost")
    env.phase("tl-m", "PreparingTarget")
    # the agent stopped renewing: renewTime an hour old on a 5 s Lease
    old = nodes.micro_time(datetime.now(UTC) - timedelta(hours=1))
    env.coord.patch_namespaced_lease(
        "mc-lost", LEASE_NS, {"spec": {"renewTime": old, "leaseDurationSeconds": 5}}
    )
    try:
        st = env.phase("tl-m", "Failed")
        cond = next(c for c in st["conditions"] if c["type"] == "Completed")
        assert cond["reason"] == "TargetFailed", cond
        vm = env.get("virtualmachines", "tl") or {}
        assert vm["status"]["nodeName"] == SRC
        testing.wait_for(lambda: "TargetFailed" in env.events("tl-m"), timeout=30, what="Event")
    finally:
        env.coord.patch_namespaced_lease(
            "mc-lost",
            LEASE_NS,
            {
                "spec": {
                    "renewTime": nodes.micro_time(datetime.now(UTC)),
                    "leaseDurationSeconds": 3600,
                }
            },
        )


def test_controller_restart_mid_running_same_outcome(env: Env) -> None:
    env.vm("rs")
    env.migrate("rs-m", "rs", target="mc-b")
    env.phase("rs-m", "PreparingTarget")
    env.target("rs-m", "mc-b", "Ready")
    env.source("rs-m", "Migrating")
    before = env.phase("rs-m", "Running")
    env.stop()
    # the outcome arrives while no controller runs
    env.target("rs-m", "mc-b", "Ready", domainActive=True)
    env.source("rs-m", "Completed")
    env.start()
    st = env.phase("rs-m", "Succeeded")
    # stamps of the phases before the restart are kept, not re-stamped
    assert st["phaseTransitions"][: len(before["phaseTransitions"])] == before["phaseTransitions"]
    testing.wait_for(
        lambda: (
            ((env.get("virtualmachines", "rs") or {}).get("status") or {}).get("nodeName") == "mc-b"
            and env.vm_labels("rs").get(groups.LABEL_NODE) == "mc-b"
        ),
        timeout=30,
        what="VM moved after restart",
    )


def test_delete_waits_on_finalizer_until_cleaned_up(env: Env) -> None:
    env.vm("dl")
    env.migrate("dl-m", "dl", target="mc-b")
    env.phase("dl-m", "PreparingTarget")
    env.target("dl-m", "mc-b", "Ready")
    env.source("dl-m", "Migrating")
    env.phase("dl-m", "Running")
    env.custom.delete_namespaced_custom_object(G, V, NS, "migrations", "dl-m")
    # still there: the source reports Migrating, so the finalizer holds
    mig = env.get("migrations", "dl-m") or {}
    assert (
        mig["metadata"].get("deletionTimestamp")
        and groups.FINALIZER in mig["metadata"]["finalizers"]
    )
    env.source("dl-m", "Aborted", reason="Cancelled", message="aborted: Migration deleted")
    env.phase("dl-m", "Cancelled")
    assert env.get("migrations", "dl-m") is not None, "gone before the target cleaned up"
    env.target("dl-m", "mc-b", "CleanedUp")
    testing.wait_for(
        lambda: env.get("migrations", "dl-m") is None, timeout=30, what="Migration deleted"
    )
    assert ((env.get("virtualmachines", "dl") or {}).get("status") or {})["nodeName"] == SRC


def test_outbound_limit_per_node(env: Env) -> None:
    names = [f"ob{i}" for i in range(3)]
    for n in names:
        env.vm(n)
    for n in names:
        env.migrate(f"{n}-m", n, target="mc-b")
    for n in names[:2]:
        env.phase(f"{n}-m", "PreparingTarget")
    cond = env.scheduled(f"{names[2]}-m")
    assert cond["reason"] == "NodeOutboundLimitReached", cond
    assert env.mstatus(f"{names[2]}-m")["phase"] == "Pending"
    # one ends (cancelled before copying, the target never reported): the third starts
    env.custom.patch_namespaced_custom_object(
        G, V, NS, "migrations", f"{names[0]}-m", {"spec": {"cancel": True}}
    )
    env.phase(f"{names[0]}-m", "Cancelled")
    env.phase(f"{names[2]}-m", "PreparingTarget")
    for n in names[1:]:
        env.custom.patch_namespaced_custom_object(
            G, V, NS, "migrations", f"{n}-m", {"spec": {"cancel": True}}
        )
        env.phase(f"{n}-m", "Cancelled")


def test_a_backup_and_a_migration_of_one_vm_take_turns(env: Env) -> None:
    """The TEST plays the backup agent too (``vmbackups.AGENT_FIELD_MANAGER``)."""
    env.vm("bt")

    def backup(name: str) -> None:
        body = {"apiVersion": groups.API_VERSION, "kind": "VMBackup", "metadata": {"name": name},
                "spec": {"vmName": "bt", "target": {"path": "/nas"}}}  # fmt: skip
        env.custom.create_namespaced_custom_object(G, V, NS, "vmbackups", body)

    def bstatus(name: str) -> dict[str, Any]:
        return dict((env.get("vmbackups", name) or {}).get("status") or {})

    def ready(name: str) -> dict[str, Any]:
        return next((c for c in bstatus(name).get("conditions") or [] if c["type"] == "Ready"), {})

    backup("bt-b")
    testing.wait_for(lambda: bstatus("bt-b").get("phase") == "Running", timeout=30,
                     what="backup admitted")  # fmt: skip
    labels = (env.get("vmbackups", "bt-b") or {})["metadata"]["labels"]
    assert labels[vmbackups.LABEL_BACKUP_NODE] == SRC and labels[groups.LABEL_VM] == "bt"
    env.migrate("bt-m", "bt", target="mc-b")
    cond = env.scheduled("bt-m")
    assert cond["reason"] == "BackupInProgress" and "bt-b" in cond["message"], cond
    assert env.mstatus("bt-m")["phase"] == "Pending"
    assert "BackupInProgress" in env.events("bt-m")
    # the agent reports the copy done: the backup succeeds, the migration goes on
    env._apply("vmbackups", "VMBackup", "bt-b", {"agent": {"node": SRC, "state": "Succeeded"}},
               vmbackups.AGENT_FIELD_MANAGER)  # fmt: skip
    testing.wait_for(lambda: bstatus("bt-b").get("phase") == "Succeeded", timeout=30,
                     what="backup Succeeded")  # fmt: skip
    env.phase("bt-m", "PreparingTarget")
    # and now a new backup waits for the running migration
    backup("bt-b2")
    testing.wait_for(lambda: ready("bt-b2").get("reason") == "MigrationInProgress", timeout=30,
                     what="backup waits for the migration")  # fmt: skip
    assert bstatus("bt-b2")["phase"] == "Pending"
    assert "bt-m" in ready("bt-b2")["message"]
