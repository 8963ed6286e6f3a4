"""Live migration through the API, end to end: controller + two agents on simulated nodes
move real TCG guests (issue 8).

What a user of vMotion expects, checked on real libvirtds and QEMU:

- the guest keeps running (its console counter continues, it never boots again), keeps
  its MAC, a host on the fabric pinging it every 10 ms loses only a few packets (printed),
  and its self-announce frames (RARP from its MAC) reach the fabric;
- the VM's status names the new node, the Migration records phases, progress and final
  figures;
- cancel mid-way leaves the VM running on the source and the target clean;
- an agent restarted mid-migration (source) still gives the right, recorded outcome;
- the target agent killed mid-copy: the migration still Succeeds (libvirt's job does not
  need the agent), the restarted target agent adopts the VM, one running copy;
- a cordoned node is drained: three LiveMigrate VMs leave it, one with
  evictionStrategy None stays and says why (Evictable=False);
- ``kubevisor migrate`` and ``kubevisor drain`` do it from a shell;
- at every poll exactly one running copy of each VM exists (a watcher thread checks both
  libvirtds for the whole module).
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import copies as copywatch
from kubevisor.devenv import guest, nodes, testing, vmops

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "kvmigfl"
NS = "default"
BOOT_S = 240.0
MIGRATE_S = 300.0


def _poll(what: str, check: Callable[[], Any], *, limit: float, show: Any = None) -> Any:
    return testing.wait_for(check, timeout=limit, what=what, every=0.2, show=show)


@pytest.fixture(scope="module")
def dev() -> Iterator[devcluster.DevCluster]:
    # --cpu=8: the drain test puts four 1-core guests on one node
    with testing.dev_cluster(
        CLUSTER, nodes_count=2, stop_timeout=5.0, agent_args=("--cpu=8",)
    ) as dev:
        dev.run_kubectl("apply", "-f", str(REPO / "docs/examples/vmtemplate.yaml"))
        yield dev


@pytest.fixture(scope="module")
def copies(dev: devcluster.DevCluster) -> Iterator[copywatch.TwoCopies]:
    with copywatch.TwoCopies(dev.nodes) as watcher:
        yield watcher
    assert watcher.polls > 0
    assert watcher.seen == [], f"two running copies seen: {watcher.seen[:5]}"


@pytest.fixture(autouse=True)
def _fresh(dev: devcluster.DevCluster) -> Iterator[None]:
    """Each test's VMs and Migrations go when it ends: idle TCG guests left running
    would take the two cores from the tests after it (and fill the nodes)."""
    yield
    dev.run_kubectl("delete", "migrations", "--all", "--wait=true", "--timeout=120s")
    dev.run_kubectl("delete", "virtualmachines", "--all", "--wait=true", "--timeout=120s")


def _cli(dev: devcluster.DevCluster, *args: str) -> str:
    """The ``kubevisor`` command, as a user runs it; its output (AssertionError on failure)."""
    proc = subprocess.run(
        [str(devcluster.VENV_BIN / "kubevisor"), f"--kubeconfig={dev.kubeconfig}", *args],
        capture_output=True, text=True, check=False, timeout=MIGRATE_S + 60,
    )  # fmt: skip
    assert proc.returncode == 0, f"kubevisor {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def _domstate(node: nodes.SimNode, dom: str) -> str | None:
    proc = subprocess.run(["virsh", "-c", node.libvirt_uri, "domstate", dom],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return proc.stdout.strip() if proc.returncode == 0 else None


def _boot(
    dev: devcluster.DevCluster,
    name: str,
    *,
    ip: str | None = None,
    extra: dict[str, Any] | None = None,
    script: str = guest.TICKER_SCRIPT,
) -> dict[str, Any]:
    """A LiveMigrate VM from the tiny template that prints ticks, once it ticks."""
    extra = {"evictionStrategy": "LiveMigrate", **(extra or {})}
    return vmops.boot(dev, name, ip=ip, script=script, extra=extra, limit=BOOT_S)


def _migrate(dev: devcluster.DevCluster, name: str, vm: str, *, to: str | None = None,
             policy: dict[str, Any] | None = None) -> None:  # fmt: skip
    spec: dict[str, Any] = {"vmName": vm}
    if to:
        spec["targetNode"] = to
    if policy:
        spec["policy"] = policy
    body = {"apiVersion": "kubevisor.io/v1alpha1", "kind": "Migration",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}  # fmt: skip
    dev.run_kubectl("create", "-f", "-", stdin=yaml.safe_dump(body))


def _final(dev: devcluster.DevCluster, name: str, *, limit: float = MIGRATE_S) -> dict[str, Any]:
    st: dict[str, Any] = _poll(
        f"Migration {name} final",
        lambda: (
            (s := vmops.status(dev, "migration", name)).get("phase")
            in ("Succeeded", "Failed", "Cancelled")
            and s
        ),
        limit=limit,
        show=lambda: vmops.status(dev, "migration", name),
    )
    return st


def _other(dev: devcluster.DevCluster, node: str) -> nodes.SimNode:
    return next(n for n in dev.nodes if n.name != node)


def _node(dev: devcluster.DevCluster, node: str) -> nodes.SimNode:
    return next(n for n in dev.nodes if n.name == node)


_CAPTURE = r"""
import select, socket, struct, sys
mac = bytes.fromhex(sys.argv[2].replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((sys.argv[1], 0))
counts = {}
print("capturing", flush=True)
while True:
    ready, _, _ = select.select([s, sys.stdin], [], [])
    if sys.stdin in ready and not sys.stdin.readline():
        break
    if s in ready:
        frame = s.recv(2048)
        if frame[6:12] == mac:
            etype = struct.unpack("!H", frame[12:14])[0]
            counts[etype] = counts.get(etype, 0) + 1
print(" ".join(f"{k:04x}={v}" for k, v in sorted(counts.items())), flush=True)
"""


@contextlib.contextmanager
def _capture(dev: devcluster.DevCluster, mac: str) -> Iterator[dict[str, int]]:
    """Frames from ``mac`` seen on the fabric bridge, by ethertype (filled on exit)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", nodes.fabric_netns_name(dev.name), sys.executable, "-c",
         _CAPTURE, "fabric", mac],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "capturing"
    counts: dict[str, int] = {}
    try:
        yield counts  # type: ignore[misc]
    finally:
        out, _ = proc.communicate(input="", timeout=30)
        for word in out.split():
            key, _, value = word.partition("=")
            counts[key] = int(value)


@contextlib.contextmanager
def _ping(dev: devcluster.DevCluster, ip: str) -> Iterator[dict[str, int]]:
    """Ping ``ip`` from the fabric every 10 ms; transmitted/received filled on exit."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", nodes.fabric_netns_name(dev.name), "ping", "-q", "-i", "0.01",
         ip],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    result: dict[str, int] = {}
    try:
        yield result
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m, out
        result["sent"], result["received"] = int(m.group(1)), int(m.group(2))


def test_live_migration_keeps_the_guest_running(
    dev: devcluster.DevCluster, copies: copywatch.TwoCopies
) -> None:
    ip = "10.77.0.150"
    st = _boot(dev, "mig-live", ip=f"{ip}/24")
    source = st["nodeName"]
    target = _other(dev, source).name
    macs = {i["name"]: i["mac"] for i in st["interfaces"]}
    console = Path(st["consoleLog"])
    _poll("the guest answers pings", lambda: subprocess.run(
        ["ip", "netns", "exec", nodes.fabric_netns_name(dev.name), "ping", "-c", "1", "-W", "1",
         ip], capture_output=True, check=False).returncode == 0, limit=60)  # fmt: skip
    mark = guest.console_mark(console)
    with _capture(dev, macs["eth0"]) as frames, _ping(dev, ip) as pings:
        _migrate(dev, "mig-live-1", "mig-live")
        _final(dev, "mig-live-1")
        _poll("the guest ticks on the target", lambda: guest.kept_running(console, mark),
              limit=60)  # fmt: skip
    # the final figures follow Succeeded: the target reports libvirt's completed job
    mig = _poll(
        "the final figures",
        lambda: (
            (s := vmops.status(dev, "migration", "mig-live-1")).get("totalTimeMs") is not None and s
        ),
        limit=30,
        show=lambda: vmops.status(dev, "migration", "mig-live-1"),
    )
    lost = pings["sent"] - pings["received"]
    print(f"\nping every 10 ms during the migration: {pings['sent']} sent, {lost} lost; "
          f"frames from the guest's MAC by ethertype: {frames}; "
          f"downtime {mig.get('downtimeMs')} ms, total {mig.get('totalTimeMs')} ms, "
          f"{mig.get('bytesTransferred')} bytes, mode {mig.get('mode')}")  # fmt: skip
    assert mig["phase"] == "Succeeded", (mig.get("source"), mig.get("target"), mig["conditions"])
    assert (mig["sourceNode"], mig["targetNode"]) == (source, target)
    phases = [t["phase"] for t in mig["phaseTransitions"]]
    for phase in ("Pending", "Scheduling", "PreparingTarget", "TargetReady", "Running",
                  "Succeeded"):  # fmt: skip
        assert phase in phases, phases
    assert mig["mode"] in ("PreCopy", "PostCopy")
    assert mig["totalTimeMs"] > 0 and mig["bytesTransferred"] > 0
    assert mig["downtimeMs"] >= 0
    # (progress is sampled once a second: a sub-second migration may record none; the
    # cancel test waits for progress from a throttled one)
    vm = _poll(
        "VM status names the target",
        lambda: (
            (s := vmops.status(dev, "virtualmachine", "mig-live")).get("nodeName") == target
            and s.get("phase") == "Running"
            and s
        ),
        limit=60,
    )
    labels = (vmops.get(dev, "virtualmachine", "mig-live") or {})["metadata"]["labels"]
    assert labels["kubevisor.io/node"] == target
    assert "kubevisor.io/migration-target" not in labels  # dropped with the move
    assert {i["name"]: i["mac"] for i in vm["interfaces"]} == macs
    assert _domstate(_node(dev, target), "default_mig-live") == "running"
    assert _domstate(_node(dev, source), "default_mig-live") is None
    # the guest never rebooted: one boot marker, and the counter continued
    assert console.read_text(errors="replace").count(guest.BOOTED_MARKER) == 1
    assert pings["received"] > 0 and lost < pings["sent"] // 2
    assert frames.get("8035", 0) >= 1, f"no RARP announce from {macs['eth0']}: {frames}"


def test_cancel_leaves_the_vm_on_the_source_and_the_target_clean(
    dev: devcluster.DevCluster, copies: copywatch.TwoCopies
) -> None:
    st = _boot(dev, "mig-cancel")
    source = st["nodeName"]
    target = _other(dev, source)
    console = Path(st["consoleLog"])
    # 1 MiB/s: the copy takes far longer than the test needs to cancel it
    _migrate(dev, "mig-cancel-1", "mig-cancel", policy={"bandwidthMiBps": 1})
    _poll(
        "the migration runs and reports progress",
        lambda: (
            (s := vmops.status(dev, "migration", "mig-cancel-1")).get("phase") == "Running"
            and (s.get("progress") or {}).get("dataProcessedBytes")
        ),
        limit=MIGRATE_S,
        show=lambda: vmops.status(dev, "migration", "mig-cancel-1"),
    )
    mark = guest.console_mark(console)
    dev.run_kubectl("patch", "migration", "mig-cancel-1", "--type=merge",
             "-p", '{"spec":{"cancel":true}}')  # fmt: skip
    mig = _final(dev, "mig-cancel-1")
    assert mig["phase"] == "Cancelled", mig
    _poll("the guest ticks on the source", lambda: guest.kept_running(console, mark), limit=60)
    assert vmops.status(dev, "virtualmachine", "mig-cancel")["nodeName"] == source
    assert _domstate(_node(dev, source), "default_mig-cancel") == "running"
    _poll(
        "the target reports CleanedUp",
        lambda: (
            (vmops.status(dev, "migration", "mig-cancel-1").get("target") or {}).get("state")
            == "CleanedUp"
        ),
        limit=60,
        show=lambda: vmops.status(dev, "migration", "mig-cancel-1"),
    )
    assert _domstate(target, "default_mig-cancel") is None
    labels = (vmops.get(dev, "virtualmachine", "mig-cancel") or {})["metadata"]["labels"]
    assert "kubevisor.io/migration-target" not in labels


def test_source_agent_restarted_mid_migration_still_succeeds(
    dev: devcluster.DevCluster, copies: copywatch.TwoCopies
) -> None:
    st = _boot(dev, "mig-restart")
    source = st["nodeName"]
    console = Path(st["consoleLog"])
    mark = guest.console_mark(console)
    _migrate(dev, "mig-restart-1", "mig-restart", policy={"bandwidthMiBps": 8})
    _poll(
        "the migration runs",
        lambda: vmops.status(dev, "migration", "mig-restart-1").get("phase") == "Running",
        limit=MIGRATE_S,
        show=lambda: vmops.status(dev, "migration", "mig-restart-1"),
    )
    devcluster.restart_agent(dev, source)  # kill -9: libvirt keeps the p2p job going
    mig = _final(dev, "mig-restart-1")
    assert mig["phase"] == "Succeeded", (mig.get("source"), mig.get("target"), mig["conditions"])
    _poll("the guest ticks on the target", lambda: guest.kept_running(console, mark), limit=60)
    target = mig["targetNode"]
    _poll(
        "VM status names the target",
        lambda: vmops.status(dev, "virtualmachine", "mig-restart").get("nodeName") == target,
        limit=60,
    )
    assert _domstate(_node(dev, source), "default_mig-restart") is None


def test_target_agent_killed_mid_copy_still_succeeds_and_the_target_adopts_the_vm(
    dev: devcluster.DevCluster, copies: copywatch.TwoCopies
) -> None:
    """The target's agent dies while the copy runs (phase Running). docs/migration.md:
    in Running the outcome is the source's (libvirt's peer-to-peer job talks to the
    target's libvirtd, not to its agent); a lost target Lease fails a migration only
    before the copy starts (PreparingTarget/TargetReady) or when the source reports the
    job failed. So for a guest that converges the one outcome is Succeeded: the VM's node
    becomes the target, its domain runs there only, and the target agent, restarted,
    adopts it. Exactly one copy runs throughout (the module's watcher)."""
    st = _boot(dev, "mig-tkill")
    source = _node(dev, st["nodeName"])
    target = _other(dev, source.name)
    console = Path(st["consoleLog"])
    _migrate(dev, "mig-tkill-1", "mig-tkill", policy={"bandwidthMiBps": 2})
    _poll(
        "the migration runs",
        lambda: vmops.status(dev, "migration", "mig-tkill-1").get("phase") == "Running",
        limit=MIGRATE_S,
        show=lambda: vmops.status(dev, "migration", "mig-tkill-1"),
    )
    mark = guest.console_mark(console)
    flags = devcluster.kill_agent(dev, target.name)
    try:
        mig = _final(dev, "mig-tkill-1")
        ready = next(c for c in mig["conditions"] if c["type"] == "Ready")
        print(f"\ntarget agent killed mid-copy: {mig['phase']} {ready['reason']}")
        assert mig["phase"] == "Succeeded", mig
        _poll("the guest keeps ticking", lambda: guest.kept_running(console, mark), limit=60)
    finally:
        devcluster.start_agent(dev, target.name, flags)  # later tests need both nodes
    _poll(
        f"the VM's node is {target.name}, where its domain runs, adopted",
        lambda: (
            (s := vmops.status(dev, "virtualmachine", "mig-tkill")).get("nodeName") == target.name
            and s.get("phase") == "Running"
            and _domstate(target, "default_mig-tkill") == "running"
            and _domstate(source, "default_mig-tkill") is None
        ),
        limit=120,
        show=lambda: (
            vmops.status(dev, "virtualmachine", "mig-tkill").get("nodeName"),
            _domstate(target, "default_mig-tkill"),
            _domstate(source, "default_mig-tkill"),
        ),
    )


def test_drain_moves_the_live_migratable_vms_and_says_why_the_others_stay(
    dev: devcluster.DevCluster, copies: copywatch.TwoCopies
) -> None:
    node1, node2 = dev.nodes[0].name, dev.nodes[1].name
    for n in (node1, node2):
        assert vmops.get(dev, "node", n) is not None, f"the dev cluster gives {n} a Node"
    dev.run_kubectl("cordon", node2)  # everything lands on node-1 first
    names = ["drain-a", "drain-b", "drain-c"]
    try:
        for name in names:
            assert _boot(dev, name)["nodeName"] == node1
        stay = _boot(dev, "drain-stay", extra={"evictionStrategy": "None"})
        assert stay["nodeName"] == node1
        dev.run_kubectl("uncordon", node2)
        drained = _cli(dev, "drain", node1, "--timeout", str(MIGRATE_S))
        assert f"node/{node1} drained" in drained, drained
        assert "default/drain-stay" in drained, drained  # it says why it stays
        for name in names:
            _poll(
                f"{name} moved to {node2}",
                lambda name=name: (
                    (s := vmops.status(dev, "virtualmachine", name)).get("nodeName") == node2
                    and s.get("phase") == "Running"
                ),
                limit=MIGRATE_S,
                show=lambda name=name: vmops.status(dev, "virtualmachine", name),
            )
            assert _domstate(_node(dev, node1), f"default_{name}") is None
        evictable = _poll(
            "drain-stay says why it stays",
            lambda: next((c for c in vmops.status(dev, "virtualmachine", "drain-stay").get(
                "conditions") or [] if c["type"] == "Evictable"), None),
            limit=60,
        )  # fmt: skip
        assert evictable["status"] == "False", evictable
        assert vmops.status(dev, "virtualmachine", "drain-stay")["nodeName"] == node1
    finally:
        dev.run_kubectl("uncordon", node1)
        dev.run_kubectl("uncordon", node2)


def test_cli_migrate_shows_the_phases_and_the_final_figures(
    dev: devcluster.DevCluster, copies: copywatch.TwoCopies
) -> None:
    st = _boot(dev, "mig-cli")
    target = _other(dev, st["nodeName"]).name
    out = _cli(dev, "migrate", "mig-cli", "--to", target)
    print(f"\n{out}")
    assert "phase Running" in out and "phase Succeeded" in out, out
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"Succeeded: {st['nodeName']} -> {target}, total "), last
    assert "downtime" in last and "moved" in last, last
    assert vmops.status(dev, "virtualmachine", "mig-cli")["nodeName"] == target


_BLOCK_MARKER = "kubevisor-block-marker"
_BLOCK_SCRIPT = (
    f"echo {_BLOCK_MARKER} | dd of=/dev/vdb bs=512 count=1 conv=sync,fsync 2>/dev/null; "
    '(i=0; while :; do i=$((i+1)); echo "kubevisor-guest: tick $i" >/dev/console; '
    'echo "tick-$i" | dd of=/dev/vdb bs=512 seek=8 count=1 conv=sync,fsync 2>/dev/null; '
    "sleep 1; done) &"
)
"""The guest writes a marker at the start of its data disk, then every second writes its
tick number at 4 KiB: what the disk holds shows both the copied data and that the running
guest writes into the copy it now runs from."""


def _disk_bytes(path: Path, scratch: Path) -> bytes:
    """The guest-visible bytes of a qcow2 file (``-U``: QEMU may hold it open)."""
    raw = scratch / f"{path.stem}.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(path), str(raw)],
                   check=True, capture_output=True)  # fmt: skip
    return raw.read_bytes()[:8192]


def _disk_tick(data: bytes) -> int:
    m = re.match(rb"tick-(\d+)", data[4096:4128])
    return int(m.group(1)) if m else 0


def test_node_local_disks_move_with_block_copy(
    dev: devcluster.DevCluster, copies: copywatch.TwoCopies, tmp_path: Path
) -> None:
    disks = [
        {"name": "root", "image": "tiny", "size": "1Gi", "clone": "linked", "storage": "local"},
        {"name": "data", "size": "64Mi", "storage": "local"},
    ]
    st = _boot(dev, "mig-block", extra={"disks": disks}, script=_BLOCK_SCRIPT)
    source = _node(dev, st["nodeName"])
    target = _other(dev, source.name)
    console = Path(st["consoleLog"])

    def data_file(node: nodes.SimNode) -> Path:
        return node.state_dir / "kubevisor/disks" / NS / "mig-block/data.qcow2"

    assert _disk_bytes(data_file(source), tmp_path).startswith(_BLOCK_MARKER.encode())
    # without allowBlockCopy no node fits: it waits in Pending saying why, nothing moves
    _migrate(dev, "mig-block-0", "mig-block")
    ready = _poll(
        "the refusal names allowBlockCopy",
        lambda: next(
            (c for c in vmops.status(dev, "migration", "mig-block-0").get("conditions") or []
             if c["type"] == "Ready" and c["reason"] == "NoTargetFits"), None),
        limit=60,
        show=lambda: vmops.status(dev, "migration", "mig-block-0"),
    )  # fmt: skip
    assert "allowBlockCopy is false" in ready["message"], ready
    assert vmops.status(dev, "migration", "mig-block-0")["phase"] == "Pending"
    assert not data_file(target).exists()
    dev.run_kubectl("delete", "migration", "mig-block-0", "--wait=true", "--timeout=60s")

    mark = guest.console_mark(console)
    _migrate(dev, "mig-block-1", "mig-block", policy={"allowBlockCopy": True})
    mig = _final(dev, "mig-block-1")
    assert mig["phase"] == "Succeeded", (mig.get("source"), mig.get("target"), mig["conditions"])
    _poll("the guest ticks on the target", lambda: guest.kept_running(console, mark), limit=60)
    assert console.read_text(errors="replace").count(guest.BOOTED_MARKER) == 1
    # the copy holds what the guest wrote on the source, and the guest now writes into it
    moved = _poll(
        "the guest writes its ticks into the target's copy",
        lambda: (b := _disk_bytes(data_file(target), tmp_path)) and _disk_tick(b) > mark.tick and b,
        limit=60,
    )
    print(f"\nblock copy: {mig.get('bytesTransferred')} bytes moved, total "
          f"{mig.get('totalTimeMs')} ms, downtime {mig.get('downtimeMs')} ms; the target's "
          f"data disk holds the marker and tick {_disk_tick(moved)} (migrated at tick "
          f"{mark.tick})")  # fmt: skip
    assert moved.startswith(_BLOCK_MARKER.encode())
    root = target.state_dir / "kubevisor/disks" / NS / "mig-block/root.qcow2"
    assert root.exists(), "the linked root overlay moved too"
    assert not data_file(source).exists(), "the source's stale copy is gone"
    _poll(
        "VM status names the target",
        lambda: vmops.status(dev, "virtualmachine", "mig-block").get("nodeName") == target.name,
        limit=60,
    )
    assert _domstate(target, "default_mig-block") == "running"


def _boot_dirtier(dev: devcluster.DevCluster, name: str) -> dict[str, Any]:
    st = _boot(dev, name, script=guest.DIRTIER_SCRIPT)
    console = Path(st["consoleLog"])
    _poll(f"{name} dirties memory", lambda: guest.DIRTY_MARKER in console.read_text(
        errors="replace"), limit=BOOT_S)  # fmt: skip
    return st


def test_a_migration_that_cannot_converge_fails_at_its_completion_timeout(
    dev: devcluster.DevCluster, copies: copywatch.TwoCopies
) -> None:
    st = _boot_dirtier(dev, "mig-slow")
    source = st["nodeName"]
    console = Path(st["consoleLog"])
    _migrate(dev, "mig-slow-1", "mig-slow",
             policy={"bandwidthMiBps": 4, "completionTimeoutSeconds": 8})  # fmt: skip
    mig = _final(dev, "mig-slow-1")
    ready = next(c for c in mig["conditions"] if c["type"] == "Ready")
    print(f"\nnon-converging guest, 4 MiB/s, 8 s allowed: {mig['phase']} {ready['reason']}: "
          f"{ready['message']}")  # fmt: skip
    assert (mig["phase"], ready["reason"]) == ("Failed", "CompletionTimeout"), mig
    mark = guest.console_mark(console)
    _poll("the guest ticks on the source", lambda: guest.kept_running(console, mark), limit=60)
    assert vmops.status(dev, "virtualmachine", "mig-slow")["nodeName"] == source
    assert _domstate(_node(dev, source), "default_mig-slow") == "running"
    assert _domstate(_other(dev, source), "default_mig-slow") is None


def test_post_copy_moves_a_guest_that_pre_copy_cannot(
    dev: devcluster.DevCluster, copies: copywatch.TwoCopies
) -> None:
    st = _boot_dirtier(dev, "mig-post")
    target = _other(dev, st["nodeName"])
    console = Path(st["consoleLog"])
    mark = guest.console_mark(console)
    _migrate(dev, "mig-post-1", "mig-post", policy={"bandwidthMiBps": 8, "postCopy": True})
    mig = _final(dev, "mig-post-1")
    assert mig["phase"] == "Succeeded", (mig.get("source"), mig.get("target"), mig["conditions"])
    mig = _poll(
        "the final figures",
        lambda: (
            (s := vmops.status(dev, "migration", "mig-post-1")).get("totalTimeMs") is not None and s
        ),
        limit=30,
        show=lambda: vmops.status(dev, "migration", "mig-post-1"),
    )
    print(f"\npost-copy: mode {mig['mode']}, total {mig['totalTimeMs']} ms, downtime "
          f"{mig.get('downtimeMs')} ms, {mig['bytesTransferred']} bytes")  # fmt: skip
    assert mig["mode"] == "PostCopy", mig
    _poll("the guest ticks on the target", lambda: guest.kept_running(console, mark), limit=60)
    assert console.read_text(errors="replace").count(guest.BOOTED_MARKER) == 1
    assert _domstate(target, "default_mig-post") == "running"
