"""VMBackup end to end: controller + agent on a simulated node back up real TCG guests
while they run and restore them into new VMs (issue 11).

- The guest writes a marker (its tick number) to its data disk every second; a live
  backup holds the marker of one instant; the guest goes on overwriting it; a VM restored
  from the backup reads, from inside the guest, exactly the marker the backup holds — one
  the source guest wrote while the backup was taken, and no longer what the source has.
- Full + two incrementals, the last one taken while the VM is paused, read (through the
  chain) byte for byte like a Full taken at that same paused instant; the incrementals are
  small; the checksums in status are the files'; deleting the Full while an incremental is
  kept is refused with a reason and removes nothing; deleting all removes only their files.
- A missing target fails with TargetUnavailable, the VM keeps running and the earlier
  backup's files are untouched.
- Restore in place (``kubevisor.io/restore-from``) is refused while the VM runs
  (VMNotStopped, nothing changed) and, once it is stopped, brings back the backup's disks
  before the next start (read from inside the guest).
- Killing the agent (kill -9) while libvirt's backup job runs leaves the earlier backup
  byte for byte and the guest running; the backup ends Succeeded (adopted) or Failed with
  a reason.
- A live backup of an ext4 disk the guest keeps rewriting checks clean (e2fsck -fn after
  the journal replay).
- A VMBackupSchedule creates a backup per due minute and prunes beyond ``keep``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import guest, testing

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "kvbackup"
NS = "default"
BOOT_S = 240.0
BACKUP_S = 240.0
TARGET = "e2e/nightly"
"""Relative: under ``<shared-dir>/backups/`` on every node."""

WRITER_SCRIPT = (
    '(i=0; while :; do i=$((i+1)); echo "kubevisor-guest: tick $i" >/dev/console; '
    'echo "marker-$i" | dd of=/dev/vdb bs=512 count=1 conv=sync,fsync 2>/dev/null; '
    "sleep 1; done) &"
)
"""The source guest: every second it overwrites the first sector of its data disk with
``marker-<tick>`` (and prints the tick on its console)."""
READ_MARKER = "kubevisor-restored:"
READER_SCRIPT = f'echo "{READ_MARKER} $(head -n 1 /dev/vdb)" >/dev/console; ' + guest.TICKER_SCRIPT
"""The restored guest: prints the first line of its data disk on its console."""

DISKS = [
    {"name": "root", "image": "tiny", "size": "1Gi", "clone": "linked", "storage": "shared"},
    {"name": "data", "size": "64Mi", "storage": "shared"},
]


def _poll(what: str, check: Callable[[], Any], *, limit: float, show: Any = None) -> Any:
    return testing.wait_for(check, timeout=limit, what=what, every=0.3, show=show)


@pytest.fixture(scope="module")
def dev() -> Iterator[devcluster.DevCluster]:
    with testing.dev_cluster(CLUSTER, nodes_count=1, stop_timeout=5.0) as dev:
        dev.run_kubectl("apply", "-f", str(REPO / "docs/examples/vmtemplate.yaml"))
        yield dev


@pytest.fixture(autouse=True)
def _fresh(dev: devcluster.DevCluster) -> Iterator[None]:
    yield
    dev.run_kubectl("delete", "vmbackups", "--all", "--wait=true", "--timeout=120s")
    dev.run_kubectl("delete", "virtualmachines", "--all", "--wait=true", "--timeout=120s")


def _get(dev: devcluster.DevCluster, kind: str, name: str) -> dict[str, Any] | None:
    proc = subprocess.run(
        [str(dev.kubectl), f"--kubeconfig={dev.kubeconfig}", "get", kind, name, "-o", "yaml"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return yaml.safe_load(proc.stdout) if proc.returncode == 0 else None


def _status(dev: devcluster.DevCluster, kind: str, name: str) -> dict[str, Any]:
    return (_get(dev, kind, name) or {}).get("status") or {}


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})


def _vm(dev: devcluster.DevCluster, name: str, spec: dict[str, Any], script: str) -> dict[str, Any]:
    template = yaml.safe_load((REPO / "docs/examples/vmtemplate.yaml").read_text())
    boot = {k: v for k, v in template["spec"]["boot"].items() if k != "cmdline"}
    body = {
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "runStrategy": "Always",
            "boot": {**boot, "cmdline": guest.kernel_cmdline(script=script)},
            **spec,
        },
    }
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))
    return _poll(
        f"{name} Running",
        lambda: (s := _status(dev, "virtualmachine", name)).get("phase") == "Running" and s,
        limit=BOOT_S,
        show=lambda: _status(dev, "virtualmachine", name),
    )


def _boot_writer(dev: devcluster.DevCluster, name: str) -> Path:
    st = _vm(dev, name, {"templateRef": {"name": "tiny"}, "disks": DISKS}, WRITER_SCRIPT)
    console = Path(st["consoleLog"])
    _poll(f"{name} writing markers", lambda: console.exists() and guest.console_mark(console).tick
          >= 2, limit=BOOT_S)  # fmt: skip
    return console


def _backup(
    dev: devcluster.DevCluster, name: str, vm: str, *, mode: str = "Full", target: str = TARGET
) -> None:
    body = {
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "VMBackup",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"vmName": vm, "mode": mode, "target": {"path": target}},
    }
    dev.run_kubectl("create", "-f", "-", stdin=yaml.safe_dump(body))


def _final(dev: devcluster.DevCluster, name: str) -> dict[str, Any]:
    return _poll(
        f"VMBackup {name} final",
        lambda: (s := _status(dev, "vmbackup", name)).get("phase") in ("Succeeded", "Failed") and s,
        limit=BACKUP_S,
        show=lambda: _status(dev, "vmbackup", name),
    )


def _succeeded(dev: devcluster.DevCluster, name: str) -> dict[str, Any]:
    st = _final(dev, name)
    assert st["phase"] == "Succeeded", st
    return st


def _guest_bytes(path: Path, scratch: Path, *, length: int = 512) -> bytes:
    """The guest-visible first bytes of a qcow2 (through its backing chain)."""
    raw = scratch / f"{path.parent.name}-{path.stem}.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(path), str(raw)],
                   check=True, capture_output=True)  # fmt: skip
    with raw.open("rb") as f:
        data = f.read(length)
    raw.unlink()
    return data


def _marker(data: bytes) -> int:
    head = data.split(b"\n", 1)[0]
    assert head.startswith(b"marker-"), data[:32]
    return int(head[len(b"marker-") :])


def _disk(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in st["disks"] if d["name"] == name)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_restored_vm_reads_the_marker_of_the_backup_instant(
    dev: devcluster.DevCluster, tmp_path: Path
) -> None:
    console = _boot_writer(dev, "bk-src")
    before = guest.console_mark(console).tick
    _backup(dev, "bk-1", "bk-src")
    st = _succeeded(dev, "bk-1")
    after = guest.console_mark(console).tick
    data = Path(_disk(st, "data")["path"])
    held = _marker(_guest_bytes(data, tmp_path))
    print(f"\nbackup bk-1: {st['sizeBytes']} bytes in {st['durationMs']} ms, data disk holds"
          f" marker-{held} (guest ticks {before}..{after} while it ran)")  # fmt: skip
    assert before <= held <= after + 1, (before, held, after)
    assert st["progress"]["doneBytes"] > 0 and st["progress"]["percent"] == 100, st["progress"]
    assert st["nodeName"] == dev.nodes[0].name
    assert st["checkpoint"] == "kubevisor-bk-1"
    for d in st["disks"]:
        assert _sha(Path(d["path"])) == d["sha256"], d
    assert _ready(st)["reason"] == "Succeeded"
    # the source goes on overwriting its marker
    source_data = dev.nodes[0].shared_dir / "disks" / NS / "bk-src/data.qcow2"
    assert source_data.is_file(), source_data
    _poll("the source overwrote the marker",
          lambda: _marker(_guest_bytes(source_data, tmp_path)) > held + 1, limit=60)  # fmt: skip

    restored = _vm(dev, "bk-restored", {"source": {"backup": {"name": "bk-1"}}}, READER_SCRIPT)
    rconsole = Path(restored["consoleLog"])
    line = _poll(
        "the restored guest prints its data disk's first line",
        lambda: next((ln for ln in rconsole.read_text(errors="replace").splitlines()
                      if ln.startswith(READ_MARKER)), None) if rconsole.exists() else None,
        limit=BOOT_S,
    )  # fmt: skip
    print(f"restored guest: {line!r}")
    assert line.split()[-1] == f"marker-{held}", line
    machine = restored["machine"]
    assert {d["name"]: d["image"] for d in machine["disks"]} == {
        d["name"]: d["path"] for d in st["disks"]
    }


def test_full_and_two_incrementals_read_like_a_full_of_the_same_instant(
    dev: devcluster.DevCluster, tmp_path: Path
) -> None:
    _boot_writer(dev, "bk-chain")
    _backup(dev, "chain-0", "bk-chain")
    full = _succeeded(dev, "chain-0")
    _backup(dev, "chain-1", "bk-chain", mode="Incremental")
    inc1 = _succeeded(dev, "chain-1")
    assert inc1["chain"] == {"full": "chain-0", "previous": "chain-0", "length": 2}
    # the same instant for the last incremental and the reference full: pause the guest
    dev.run_kubectl("annotate", "virtualmachine", "bk-chain", "kubevisor.io/paused=true")
    _poll("bk-chain paused",
          lambda: _status(dev, "virtualmachine", "bk-chain").get("phase") == "Paused",
          limit=60)  # fmt: skip
    _backup(dev, "chain-2", "bk-chain", mode="Incremental")
    inc2 = _succeeded(dev, "chain-2")
    assert inc2["chain"] == {"full": "chain-0", "previous": "chain-1", "length": 3}
    _backup(dev, "reference", "bk-chain")
    ref = _succeeded(dev, "reference")
    dev.run_kubectl("annotate", "virtualmachine", "bk-chain", "kubevisor.io/paused-")
    sizes = {n: s["sizeBytes"] for n, s in (("full", full), ("inc1", inc1), ("inc2", inc2))}
    print(f"\nchain sizes: {sizes}, reference full {ref['sizeBytes']} bytes")
    for disk in ("root", "data"):
        chained, whole = Path(_disk(inc2, disk)["path"]), Path(_disk(ref, disk)["path"])
        proc = subprocess.run(["qemu-img", "compare", "-U", str(chained), str(whole)],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert proc.returncode == 0, f"{disk}: {proc.stdout}{proc.stderr}"
        info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(chained)],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert yaml.safe_load(info)["backing-filename"] == _disk(inc1, disk)["path"]
    assert sizes["inc1"] < sizes["full"] and sizes["inc2"] < sizes["full"], sizes

    # deleting the full while an incremental is kept is refused, nothing removed
    dev.run_kubectl("delete", "vmbackup", "chain-0", "--wait=false")
    refused = _poll(
        "the deletion refusal",
        lambda: (
            (c := _ready(_status(dev, "vmbackup", "chain-0"))).get("reason")
            == "NeededByIncremental"
            and c
        ),
        limit=60,
    )
    assert "chain-1" in refused["message"], refused
    assert Path(full["directory"]).is_dir()
    events = dev.run_kubectl("get", "events", "--field-selector",
                             "involvedObject.name=chain-0,reason=NeededByIncremental")  # fmt: skip
    assert "NeededByIncremental" in events, events
    # deleting the rest removes their own directories only (the reference stays)
    dev.run_kubectl("delete", "vmbackup", "chain-2", "chain-1", "--wait=true", "--timeout=120s")
    _poll("chain-0 goes once nothing needs it",
          lambda: _get(dev, "vmbackup", "chain-0") is None, limit=120)  # fmt: skip
    for st in (full, inc1, inc2):
        assert not Path(st["directory"]).exists(), st["directory"]
    assert all(Path(d["path"]).is_file() for d in ref["disks"]), "another backup's files stay"


def test_a_missing_target_fails_clearly_and_loses_nothing(
    dev: devcluster.DevCluster, tmp_path: Path
) -> None:
    console = _boot_writer(dev, "bk-miss")
    _backup(dev, "miss-good", "bk-miss")
    good = _succeeded(dev, "miss-good")
    sums = {d["path"]: _sha(Path(d["path"])) for d in good["disks"]}
    _backup(dev, "miss-inc-none", "bk-miss", mode="Incremental", target="/nonexistent-nas/x")
    waiting = _poll(
        "the incremental without a previous backup there says so",
        lambda: (
            (c := _ready(_status(dev, "vmbackup", "miss-inc-none"))).get("reason")
            == "NoPreviousBackup"
            and c
        ),
        limit=60,
    )
    assert _status(dev, "vmbackup", "miss-inc-none")["phase"] == "Pending", waiting
    dev.run_kubectl("delete", "vmbackup", "miss-inc-none", "--wait=true", "--timeout=60s")
    _backup(dev, "miss-1", "bk-miss", target="/nonexistent-nas/x")
    st = _final(dev, "miss-1")
    assert st["phase"] == "Failed", st
    ready = _ready(st)
    print(f"\nmissing target: {ready['reason']}: {ready['message']}")
    assert ready["reason"] == "TargetUnavailable" and "/nonexistent-nas/x" in ready["message"]
    assert not Path("/nonexistent-nas").exists()
    assert {d["path"]: _sha(Path(d["path"])) for d in good["disks"]} == sums
    mark = guest.console_mark(console)
    _poll("the VM keeps running", lambda: guest.kept_running(console, mark), limit=60)
    assert _status(dev, "virtualmachine", "bk-miss")["phase"] == "Running"


def _cli(dev: devcluster.DevCluster, *args: str) -> str:
    """The ``kubevisor`` command, as a user runs it; its output (AssertionError on failure)."""
    proc = subprocess.run(
        [str(devcluster.VENV_BIN / "kubevisor"), f"--kubeconfig={dev.kubeconfig}", *args],
        capture_output=True, text=True, check=False, timeout=BACKUP_S + BOOT_S,
    )  # fmt: skip
    assert proc.returncode == 0, f"kubevisor {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def test_cli_backup_and_restore_show_progress_and_the_result(dev: devcluster.DevCluster) -> None:
    _boot_writer(dev, "bk-cli")
    out = _cli(dev, "backup", "bk-cli", "--name", "bk-cli-1", "--target", TARGET)
    print(f"\n{out}")
    # (a backup of the tiny guest can end between two polls: Running is not always seen)
    assert "vmbackup/bk-cli-1 created" in out and "phase Succeeded" in out, out
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"Succeeded: vmbackup/bk-cli-1 on {dev.nodes[0].name}, "), last
    assert "MiB written" in last and " ms" in last, last
    inc = _cli(dev, "backup", "bk-cli", "--name", "bk-cli-2", "--target", TARGET,
               "--mode", "Incremental")  # fmt: skip
    assert "incremental on bk-cli-1 (chain of 2)" in inc.strip().splitlines()[-1], inc
    out = _cli(dev, "restore", "bk-cli-2", "--as", "bk-cli-back")
    print(out)
    assert out.strip().splitlines()[-1].startswith("Running: virtualmachine/bk-cli-back on "), out


def test_restore_in_place_needs_the_vm_stopped_then_brings_back_the_backup(
    dev: devcluster.DevCluster, tmp_path: Path
) -> None:
    """``kubevisor.io/restore-from`` on a running VM is refused (Restored=False
    VMNotStopped) and changes nothing; once stopped, the disks are replaced from the
    backup before the next start: the guest reads the backup's marker."""
    _boot_writer(dev, "bk-inplace")
    _backup(dev, "ip-1", "bk-inplace")
    st = _succeeded(dev, "ip-1")
    held = _marker(_guest_bytes(Path(_disk(st, "data")["path"]), tmp_path))
    source_data = dev.nodes[0].shared_dir / "disks" / NS / "bk-inplace/data.qcow2"
    _poll("the guest overwrote the marker",
          lambda: _marker(_guest_bytes(source_data, tmp_path)) > held + 1, limit=60)  # fmt: skip
    dev.run_kubectl("annotate", "virtualmachine", "bk-inplace", "kubevisor.io/restore-from=ip-1")

    def restored() -> dict[str, Any]:
        conds = _status(dev, "virtualmachine", "bk-inplace").get("conditions") or []
        return next((c for c in conds if c["type"] == "Restored"), {})

    refused = _poll("Restored=False VMNotStopped", lambda: (c := restored()).get("reason")
                    == "VMNotStopped" and c, limit=60)  # fmt: skip
    print(f"\nrunning VM: Restored={refused['status']} {refused['reason']}: {refused['message']}")
    assert refused["status"] == "False" and "stopped" in refused["message"]
    assert "restore" not in _status(dev, "virtualmachine", "bk-inplace")
    assert _status(dev, "virtualmachine", "bk-inplace")["phase"] == "Running"

    dev.run_kubectl("patch", "virtualmachine", "bk-inplace", "--type=merge",
                    "-p", '{"spec": {"runStrategy": "Halted"}}')  # fmt: skip
    _poll("the VM stopped", lambda: _status(dev, "virtualmachine", "bk-inplace").get("phase")
          == "Stopped", limit=BOOT_S)  # fmt: skip
    pending = _poll("Restored=False RestorePending", lambda: (c := restored()).get("reason")
                    == "RestorePending" and c, limit=60)  # fmt: skip
    print(f"stopped VM: {pending['reason']}: {pending['message']}")
    before = _marker(_guest_bytes(source_data, tmp_path))
    assert before > held, (before, held)
    # start it again with a guest that only reads its data disk
    template = yaml.safe_load((REPO / "docs/examples/vmtemplate.yaml").read_text())
    boot = {k: v for k, v in template["spec"]["boot"].items() if k != "cmdline"}
    # (a stopped VM takes a new machine; one asked to run keeps the recorded one)
    cmdline = guest.kernel_cmdline(script=READER_SCRIPT)
    patch = {"spec": {"boot": {**boot, "cmdline": cmdline}}}
    dev.run_kubectl("patch", "virtualmachine", "bk-inplace", "--type=merge", "-p",
                    json.dumps(patch))  # fmt: skip

    def recorded() -> bool:
        machine = _status(dev, "virtualmachine", "bk-inplace").get("machine") or {}
        return bool((machine.get("boot") or {}).get("cmdline") == cmdline)

    _poll("the stopped VM records the reader's cmdline", recorded, limit=60)
    dev.run_kubectl("patch", "virtualmachine", "bk-inplace", "--type=merge",
                    "-p", '{"spec": {"runStrategy": "Always"}}')  # fmt: skip

    def back() -> dict[str, Any] | None:
        st = _status(dev, "virtualmachine", "bk-inplace")
        ok = st.get("phase") == "Running" and restored().get("status") == "True"
        return st if ok else None

    vm = _poll("Restored=True and Running", back, limit=BOOT_S,
               show=lambda: _status(dev, "virtualmachine", "bk-inplace"))  # fmt: skip
    assert vm["appliedRestore"] == "ip-1"
    console = Path(vm["consoleLog"])
    line = _poll(
        "the guest prints its data disk's first line",
        lambda: next((ln for ln in console.read_text(errors="replace").splitlines()
                      if ln.startswith(READ_MARKER)), None) if console.exists() else None,
        limit=BOOT_S,
    )  # fmt: skip
    print(f"restored in place: {line!r} (the backup held marker-{held}, the disk had"
          f" marker-{before})")  # fmt: skip
    assert line.split()[-1] == f"marker-{held}", line
    for d in st["disks"]:
        assert _sha(Path(d["path"])) == d["sha256"], d  # the backup itself is untouched


def _job_running(dev: devcluster.DevCluster, domain: str) -> bool:
    proc = subprocess.run(
        ["virsh", "-c", dev.nodes[0].libvirt_uri, "domjobinfo", domain],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return "Unbounded" in proc.stdout or "Bounded" in proc.stdout


def test_killing_the_agent_mid_backup_keeps_the_previous_backup_and_the_vm(
    dev: devcluster.DevCluster, tmp_path: Path
) -> None:
    """A 1 GiB random data disk makes the live backup last long enough to kill the
    node's agent (kill -9) while libvirt's job runs. The restarted agent adopts the job
    (Succeeded, files checksummed) or reports it Failed with a reason and no staging
    left; either way the earlier backup's files are byte for byte the same and the guest
    kept running (its tick counter continues, no reboot)."""
    image = dev.nodes[0].shared_dir / "e2e-kill-data.raw"
    with image.open("wb") as f:
        for _ in range(1024):
            f.write(os.urandom(1 << 20))
    try:
        disks = [DISKS[0], {"name": "data", "image": str(image), "size": "1Gi",
                            "clone": "full", "storage": "shared"}]  # fmt: skip
        st = _vm(dev, "bk-kill", {"templateRef": {"name": "tiny"}, "disks": disks},
                 guest.TICKER_SCRIPT)  # fmt: skip
        console = Path(st["consoleLog"])
        _poll("bk-kill ticking", lambda: console.exists() and guest.console_mark(console).tick
              >= 2, limit=BOOT_S)  # fmt: skip
        _backup(dev, "kill-good", "bk-kill")
        good = _succeeded(dev, "kill-good")
        sums = {d["path"]: _sha(Path(d["path"])) for d in good["disks"]}
        _backup(dev, "kill-mid", "bk-kill")
        _poll("libvirt's backup job runs", lambda: _job_running(dev, f"{NS}_bk-kill"),
              limit=BACKUP_S, show=lambda: _status(dev, "vmbackup", "kill-mid"))  # fmt: skip
        mark = guest.console_mark(console)
        devcluster.restart_agent(dev, dev.nodes[0].name)
        print(f"\nagent killed while the job ran (progress"
              f" {_status(dev, 'vmbackup', 'kill-mid').get('progress')})")  # fmt: skip
        end = _final(dev, "kill-mid")
        ready = _ready(end)
        print(f"after the restart: {end['phase']}: {ready.get('reason')}: {ready.get('message')}")
        if end["phase"] == "Succeeded":
            for d in end["disks"]:
                assert _sha(Path(d["path"])) == d["sha256"], d
        else:
            assert ready.get("reason") and ready.get("message"), ready
            target = Path(good["directory"]).parent
            assert not (target / ".kill-mid.partial").exists()
        assert {d["path"]: _sha(Path(d["path"])) for d in good["disks"]} == sums
        _poll("the VM keeps running", lambda: guest.kept_running(console, mark), limit=60)
        assert _status(dev, "virtualmachine", "bk-kill")["phase"] == "Running"
    finally:
        image.unlink(missing_ok=True)


FS_MOUNTED = "kubevisor-guest: fs mounted"
EXT4_MODULES = ("crc32c-intel", "crc32c_generic", "jbd2", "mbcache", "crc16", "ext4")
FS_WRITER_SCRIPT = (
    "mkdir -p /tmp/m /data; tar -x -f /dev/vdc -C /tmp/m; "
    f"for m in {' '.join(EXT4_MODULES)}; do insmod /tmp/m/$m.ko 2>/dev/null; done; "
    f'mount -t ext4 /dev/vdb /data && echo "{FS_MOUNTED}" >/dev/console; '
    "(i=0; while :; do i=$((i+1)); dd if=/dev/urandom of=/data/f$((i%40)) bs=4k count=32 "
    "2>/dev/null; echo $i >/data/count; done) & " + guest.TICKER_SCRIPT
)
"""The guest mounts an ext4 data disk (its modules come on a third disk as a raw tar: the
tiny initramfs has no ext4) and rewrites files on it without pause."""


def _ext4_modules_tar(dest: Path, staging: Path) -> None:
    """The host kernel's ext4 modules (and their dependencies) as a raw tar image."""
    # the guest's kernel, by hack/build-guest.sh's rule (not the host's: uname -r)
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*-amd64"))
    if not kernels:
        pytest.skip("no Debian kernel in /boot (the tiny guest's kernel and modules)")
    kver = kernels[-1]
    shown = subprocess.run(
        ["modprobe", "-C", "/dev/null", "-S", kver.strip(), "--show-depends", "ext4"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    paths = [Path(line.split()[1]) for line in shown.splitlines() if line.startswith("insmod")]
    if any(p.suffix != ".ko" for p in paths):
        pytest.skip(f"compressed kernel modules ({paths}); the guest's insmod reads .ko only")
    staging.mkdir()
    for p in paths:
        (staging / p.name).write_bytes(p.read_bytes())
    subprocess.run(["tar", "-c", "-f", str(dest), "-C", str(staging), *(p.name for p in paths)],
                   check=True)  # fmt: skip
    with dest.open("ab") as f:
        f.truncate(16 << 20)


def test_a_backup_taken_while_the_guest_writes_has_a_clean_file_system(
    dev: devcluster.DevCluster, tmp_path: Path
) -> None:
    """Crash-consistent: the live backup's copy of an ext4 disk the guest keeps writing,
    made standalone as a restore makes it (``qemu-img convert``), replays its journal like
    a file system after power loss and then checks clean (``e2fsck -fn`` exit 0)."""
    testing.require_tools("e2fsck", "mkfs.ext4", "modprobe", "tar")
    shared = dev.nodes[0].shared_dir
    fs = shared / "e2e-fs-data.raw"
    mods = shared / "e2e-fs-mods.raw"
    try:
        with fs.open("wb") as f:
            f.truncate(64 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(fs)], check=True)
        _ext4_modules_tar(mods, tmp_path / "mods")
        disks = [
            DISKS[0],
            {"name": "data", "image": str(fs), "size": "64Mi", "clone": "full",
             "storage": "shared"},
            {"name": "mods", "image": str(mods), "size": "16Mi", "clone": "full",
             "storage": "shared"},
        ]  # fmt: skip
        spec = {"templateRef": {"name": "tiny"}, "disks": disks}
        st = _vm(dev, "bk-fs", spec, FS_WRITER_SCRIPT)
        console = Path(st["consoleLog"])
        _poll("the guest mounted ext4", lambda: FS_MOUNTED in console.read_text(errors="replace"),
              limit=BOOT_S)  # fmt: skip
        mark = guest.console_mark(console)
        _poll("the guest ticks while writing", lambda: guest.kept_running(console, mark), limit=60)
        _backup(dev, "fs-1", "bk-fs")
        b = _succeeded(dev, "fs-1")
        raw = tmp_path / "restored-data.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", _disk(b, "data")["path"], str(raw)],
                       check=True)  # fmt: skip
        replay = subprocess.run(["e2fsck", "-E", "journal_only", "-y", str(raw)],
                                capture_output=True, text=True, check=False)  # fmt: skip
        check = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True,
                               check=False)  # fmt: skip
        print(f"\njournal replay rc={replay.returncode}: {replay.stdout.strip()[-300:]}")
        print(f"e2fsck -fn rc={check.returncode}: {check.stdout.strip()[-400:]}")
        assert check.returncode == 0, check.stdout + check.stderr
        assert _status(dev, "virtualmachine", "bk-fs")["phase"] == "Running"
    finally:
        fs.unlink(missing_ok=True)
        mods.unlink(missing_ok=True)


def test_a_schedule_creates_backups_on_time_and_keeps_the_last_one(
    dev: devcluster.DevCluster,
) -> None:
    """``* * * * *`` with keep 1: a backup per minute, named for its instant; once the
    second Succeeded the first is pruned — its VMBackup and its files go, the kept one's
    stay."""
    _boot_writer(dev, "bk-sched")
    body = {
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "VMBackupSchedule",
        "metadata": {"name": "every-minute", "namespace": NS},
        "spec": {"vmName": "bk-sched", "schedule": "* * * * *", "keep": 1,
                 "target": {"path": "e2e/scheduled"}},
    }  # fmt: skip
    dev.run_kubectl("create", "-f", "-", stdin=yaml.safe_dump(body))
    try:

        def ours() -> list[dict[str, Any]]:
            label = "kubevisor.io/backup-schedule=every-minute"
            out = dev.run_kubectl("get", "vmbackups", "-l", label, "-o", "yaml")
            items = (yaml.safe_load(out) or {}).get("items") or []
            return sorted(items, key=lambda o: o["metadata"]["name"])

        first = _poll("the first scheduled backup", lambda: ours() or None, limit=90)[0]
        name1 = first["metadata"]["name"]
        assert name1.startswith("every-minute-") and len(name1) == len("every-minute-") + 12
        st1 = _succeeded(dev, name1)
        sched = _status(dev, "vmbackupschedule", "every-minute")
        print(f"\nschedule: {sched.get('phase')}, last {sched.get('lastBackup')},"
              f" next {sched.get('nextRunAt')}: {_ready(sched).get('message')}")  # fmt: skip
        assert sched["phase"] == "Active" and _ready(sched)["reason"] == "Scheduled"
        second = _poll("the second scheduled backup", lambda: (o := ours()) and
                       o[-1]["metadata"]["name"] != name1 and o[-1], limit=90)  # fmt: skip
        name2 = second["metadata"]["name"]
        st2 = _succeeded(dev, name2)
        _poll(f"{name1} pruned", lambda: _get(dev, "vmbackup", name1) is None, limit=90)
        assert not Path(st1["directory"]).exists(), st1["directory"]
        for d in st2["disks"]:
            assert _sha(Path(d["path"])) == d["sha256"], d

        def kept() -> list[str] | None:
            k = _status(dev, "vmbackupschedule", "every-minute").get("kept")
            return k if k == [name2] else None

        _poll("status.kept names the second only", kept, limit=30)
        print(f"pruned {name1}, kept {name2}")
    finally:
        dev.run_kubectl("delete", "vmbackupschedule", "every-minute", "--wait=true")
