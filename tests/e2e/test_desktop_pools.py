"""Desktop pools end to end on real QEMU (TCG) tiny guests: controller + one agent on a
simulated node, at most two guests at once.

- a pool reaches min and keeps its spare, its desktops run (a VNC display each, what the
  display gateway connects to); a claim binds; the user's second claim waits at the
  per-user limit; scale-in removes the idle desktop and leaves the one in use running;
- dedicated + Refresh: the user gets the same desktop (same name) again, and its disk is
  clean: the marker the guest wrote into its data disk before logoff is gone after.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.api import desktoppools, groups, naming
from kubevisor.devenv import cluster as devcluster
from kubevisor.devenv import guest, nodes, testing

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "kvdesk"
NS = "default"
BOOT_S = 240.0
MARK = b"kvmark-"
#: At boot: a data disk without our marker is clean — write a fresh one (a new uuid per
#: boot) and say so; a disk with one says which. Then tick.
DISK_SCRIPT = (
    "id=$(cat /proc/sys/kernel/random/uuid); "
    "old=$(dd if=/dev/vdb bs=64 count=1 2>/dev/null); "
    'case "$old" in kvmark-*) echo "kubevisor-desktop: disk had $old" >/dev/console;; '
    '*) echo "kvmark-$id" | dd of=/dev/vdb bs=512 count=1 conv=sync,fsync 2>/dev/null; '
    'echo "kubevisor-desktop: disk clean, wrote kvmark-$id" >/dev/console;; esac; '
    + guest.TICKER_SCRIPT
)


def _poll(what: str, check: Callable[[], Any], *, limit: float = BOOT_S, show: Any = None) -> Any:
    return testing.wait_for(check, timeout=limit, what=what, every=0.5, show=show)


@pytest.fixture(scope="module")
def dev() -> Iterator[devcluster.DevCluster]:
    with testing.dev_cluster(CLUSTER, nodes_count=1, stop_timeout=5.0) as dev:
        example = yaml.safe_load((REPO / "docs/examples/vmtemplate.yaml").read_text())
        spec = example["spec"]
        spec["memory"] = "192Mi"
        spec["disks"] = [
            {"name": "root", "image": "tiny", "size": "1Gi", "clone": "linked", "storage": "local"},
            {"name": "data", "size": "16Mi", "storage": "local"},
        ]
        spec["boot"]["cmdline"] = guest.kernel_cmdline(script=DISK_SCRIPT)
        body = {**example, "metadata": {"name": "desk", "namespace": NS}}
        dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))
        yield dev


def _get(dev: devcluster.DevCluster, kind: str, name: str) -> dict[str, Any] | None:
    proc = subprocess.run(
        [str(dev.kubectl), f"--kubeconfig={dev.kubeconfig}", "get", kind, name, "-o", "yaml"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return yaml.safe_load(proc.stdout) if proc.returncode == 0 else None


def _status(dev: devcluster.DevCluster, kind: str, name: str) -> dict[str, Any]:
    return (_get(dev, kind, name) or {}).get("status") or {}


def _apply(dev: devcluster.DevCluster, kind: str, name: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": groups.API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))


def _claim(dev: devcluster.DevCluster, pool: str, user: str) -> str:
    name = f"claim-{uuid.uuid4().hex[:6]}"
    _apply(dev, "DesktopClaim", name, {"poolRef": {"name": pool}, "user": user})
    return name


def _desktops(dev: devcluster.DevCluster, pool: str) -> list[dict[str, Any]]:
    out = dev.run_kubectl(
        "get", "virtualmachines", "-l", f"{groups.LABEL_POOL}={pool}", "-o", "yaml"
    )
    items = yaml.safe_load(out).get("items") or []
    return [vm for vm in items if not vm["metadata"].get("deletionTimestamp")]


def _bound(dev: devcluster.DevCluster, claim: str) -> dict[str, Any]:
    return dict(
        _poll(
            f"claim {claim} Bound",
            lambda: (s := _status(dev, "desktopclaim", claim)).get("phase") == "Bound" and s,
            show=lambda: _status(dev, "desktopclaim", claim),
        )
    )


def _domstate(node: nodes.SimNode, dom: str) -> str:
    proc = subprocess.run(["virsh", "-c", node.libvirt_uri, "domstate", dom],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _data_disk(dev: devcluster.DevCluster, vm: str) -> Path:
    return dev.nodes[0].state_dir / "kubevisor/disks" / NS / vm / "data.qcow2"


def _disk_head(path: Path, scratch: Path) -> bytes:
    """The first guest-visible bytes of a qcow2 file (``-U``: QEMU holds it open)."""
    raw = scratch / f"{path.parent.name}-{uuid.uuid4().hex[:4]}.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(path), str(raw)],
                   check=True, capture_output=True)  # fmt: skip
    try:
        return raw.read_bytes()[:64].split(b"\n")[0]
    finally:
        raw.unlink()


def _cleanup(dev: devcluster.DevCluster, pool: str) -> None:
    dev.run_kubectl("delete", "desktopclaims", "--all", "--wait=true", "--timeout=120s")
    dev.run_kubectl("delete", "desktoppool", pool, "--wait=true", "--timeout=60s")
    dev.run_kubectl(
        "delete", "virtualmachines", "-l", f"{groups.LABEL_POOL}={pool}", "--wait=true",
        "--timeout=180s",
    )  # fmt: skip


def test_pool_sizes_binds_holds_the_user_limit_and_scales_in_around_the_desktop_in_use(
    dev: devcluster.DevCluster,
) -> None:
    pool = "office"
    spec = {"templateRef": {"name": "desk"}, "min": 2, "max": 2, "spare": 1,
            "perUserLimit": 1, "logoffPolicy": "keep"}  # fmt: skip
    _apply(dev, "DesktopPool", pool, spec)
    try:
        st = _poll(
            "pool Ready with 2 running desktops",
            lambda: (
                (s := _status(dev, "desktoppool", pool)).get("phase") == "Ready"
                and s.get("ready") == 2
                and s
            ),
            show=lambda: _status(dev, "desktoppool", pool),
        )
        assert (st["spare"], st["claimed"]) == (2, 0)
        for vm in _desktops(dev, pool):
            display = (vm.get("status") or {}).get("display") or {}
            assert display.get("port"), f"{vm['metadata']['name']} has a VNC display: {display}"

        claim = _claim(dev, pool, "alice")
        used = _bound(dev, claim)["vmName"]
        print(
            f"\nclaim {claim} bound to {used}: {_status(dev, 'desktopclaim', claim)['url'][:60]}..."
        )
        second = _claim(dev, pool, "alice")
        _poll(
            "the second claim waits at the per-user limit",
            lambda: any(
                c.get("reason") == "UserLimitReached"
                for c in _status(dev, "desktopclaim", second).get("conditions") or []
            ),
            limit=60,
        )
        assert _status(dev, "desktoppool", pool)["claimed"] == 1

        dev.run_kubectl("patch", "desktoppool", pool, "--type=merge",
                        "-p", '{"spec": {"min": 0, "spare": 0}}')  # fmt: skip
        _poll(
            "scale-in leaves only the desktop in use",
            lambda: [vm["metadata"]["name"] for vm in _desktops(dev, pool)] == [used],
            limit=180,
            show=lambda: [vm["metadata"]["name"] for vm in _desktops(dev, pool)],
        )
        node = dev.nodes[0]
        assert _domstate(node, naming.domain_name(NS, used)) == "running", "still running"
        assert _status(dev, "desktopclaim", claim)["phase"] == "Bound"
        assert _status(dev, "virtualmachine", used)["phase"] == "Running"
    finally:
        _cleanup(dev, pool)


def test_dedicated_refresh_gives_the_same_desktop_with_a_clean_disk(
    dev: devcluster.DevCluster, tmp_path: Path
) -> None:
    pool = "dedicated"
    spec = {"templateRef": {"name": "desk"}, "min": 0, "max": 1, "spare": 0,
            "assignment": "dedicated", "logoffPolicy": "refresh"}  # fmt: skip
    _apply(dev, "DesktopPool", pool, spec)
    try:
        first = _claim(dev, pool, "bob")
        vm = _bound(dev, first)["vmName"]
        assert vm == desktoppools.desktop_name(pool, "bob")
        disk = _data_disk(dev, vm)
        before = _poll(
            "the guest wrote its marker into the data disk",
            lambda: disk.exists() and (h := _disk_head(disk, tmp_path)).startswith(MARK) and h,
            limit=120,
        )
        print(f"\nbefore logoff {vm}'s data disk holds {before.decode()}")

        dev.run_kubectl("delete", "desktopclaim", first, "--wait=true", "--timeout=120s")
        _poll("the refreshed desktop and its disk are gone",
              lambda: _get(dev, "virtualmachine", vm) is None and not disk.exists(),
              limit=180)  # fmt: skip

        again = _claim(dev, pool, "bob")
        assert _bound(dev, again)["vmName"] == vm, "the same desktop (name) for the same user"
        after = _poll(
            "the new guest found a clean disk and wrote a new marker",
            lambda: disk.exists() and (h := _disk_head(disk, tmp_path)).startswith(MARK) and h,
            limit=120,
        )
        print(f"after logoff and a new claim it holds {after.decode()}")
        assert after != before, "the marker written before logoff is gone"
        console = Path(_status(dev, "virtualmachine", vm)["consoleLog"])
        _poll(
            "the guest's console says its disk was clean",
            lambda: f"disk clean, wrote {after.decode()}" in console.read_text(errors="replace"),
            limit=60,
        )
        assert f"disk had {before.decode()}" not in console.read_text(errors="replace")
    finally:
        _cleanup(dev, pool)
