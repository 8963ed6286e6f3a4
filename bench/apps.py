"""Benchmark (issue 16, published applications): claim -> the application's window in the
browser, against claim -> a desktop's first lit frame with a spare, in the same run; and
how many sessions one application-server VM holds before a new session's start time
doubles.

One dev cluster (one simulated node, real TCG guests), the controller, the real
``kubevisor-gateway`` and Debian's headless Chromium (devenv/browser.py).

- baseline: a DesktopPool of tiny guests (``spare: 1``, ``logoffPolicy: keep``). Each of
  ``--desktops`` rounds waits until the pool has a spare running, then times: create a
  DesktopClaim -> Bound with a URL -> the page open in Chromium -> noVNC's canvas shows a
  lit pixel (the guest's console). The claim is then deleted (the desktop is kept).
- applications: an Application pool (``application: xterm``) with one server of the
  Debian app guest, booted and its sshd up before timing. Sessions are opened one after
  another and all kept open: session k times create claim -> Bound -> page -> the canvas
  shows the xterm window and nothing else (devenv/appscreens). The first session whose
  time exceeds twice the first's is "where start time doubles".

Prints a table and ONE JSON line; never asserts a time.

Run as root from the repo root (about 3 minutes with the defaults):
    .venv/bin/python bench/apps.py [--desktops 5] [--sessions 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from kubevisor.api import groups
from kubevisor.devenv import appguest, appscreens, browser, guest, testing
from kubevisor.devenv import cluster as devcluster

REPO = Path(__file__).resolve().parents[1]
CLUSTER = "kvbapps"
NS = "default"
KEY_NS = "kubevisor-system"
SERVER_IP = "10.77.0.121"
BOOT_S = 300.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(dev: devcluster.DevCluster, kind: str, name: str) -> dict[str, Any]:
    proc = subprocess.run(
        [str(dev.kubectl), f"--kubeconfig={dev.kubeconfig}", "-n", NS, "get", kind, name,
         "-o", "yaml"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return (yaml.safe_load(proc.stdout) or {}) if proc.returncode == 0 else {}


def _apply(dev: devcluster.DevCluster, kind: str, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": groups.API_VERSION, "kind": kind,
            "metadata": {"name": name, "namespace": NS}, "spec": spec}  # fmt: skip
    dev.run_kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))


async def _until(predicate: Any, *, within: float, what: str) -> Any:
    """Poll ``predicate`` (sync: kubectl, so in a thread) until truthy."""
    return await testing.wait_for_async(
        lambda: asyncio.to_thread(predicate), timeout=within, what=what
    )


async def _claim_to_screen(
    dev: devcluster.DevCluster, b: browser.Browser, pool: str, user: str, *, app: bool
) -> tuple[float, browser.Page]:
    """Seconds from creating a claim to its screen in the browser (see module doc)."""
    t0 = time.monotonic()
    await asyncio.to_thread(_apply, dev, "DesktopClaim", user,
                            {"poolRef": {"name": pool}, "user": user})  # fmt: skip

    def bound() -> str | None:
        st = _get(dev, "desktopclaim", user).get("status") or {}
        return st.get("url") if st.get("phase") == "Bound" else None

    url = await _until(bound, within=BOOT_S, what=f"claim {user} Bound")
    page = await b.new_page(url)

    async def shown() -> bool:
        shot = await appscreens.canvas(page)
        if shot is None:
            return False
        seen = appscreens.seen(shot)
        return seen.only_a_window if app else seen.window is not None

    await testing.wait_for_async(shown, timeout=120, what=f"{user}'s screen", every=0.1)
    return time.monotonic() - t0, page


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(dev: devcluster.DevCluster, args: argparse.Namespace) -> dict[str, Any]:
    async with browser.chromium(log=dev.cluster_dir / "logs" / "chromium.log") as b:
        # baseline: desktops with a spare
        _apply(dev, "DesktopPool", "bdesk",
               {"templateRef": {"name": "bdesk"}, "min": 0, "max": 2, "spare": 1,
                "logoffPolicy": "keep", "tokenTtlSeconds": 600})  # fmt: skip
        desk: list[float] = []
        for i in range(args.desktops):
            await _until(
                lambda: (_get(dev, "desktoppool", "bdesk").get("status") or {}).get("spare"),
                within=BOOT_S, what="a spare desktop",
            )  # fmt: skip
            took, page = await _claim_to_screen(dev, b, "bdesk", f"d{i}", app=False)
            desk.append(took)
            log(f"desktop claim {i}: {took:.2f} s")
            await page.close()
            await asyncio.to_thread(dev.run_kubectl, "delete", "desktopclaim", f"d{i}",
                                    "--wait=true", "--timeout=60s")  # fmt: skip
        # applications: one server, sessions accumulating on it
        _apply(dev, "DesktopPool", "bapps",
               {"templateRef": {"name": "bapps"}, "min": 1, "max": 1, "spare": 0,
                "mode": "Application", "application": "xterm", "tokenTtlSeconds": 600})  # fmt: skip

        def server_up() -> bool:
            st = _get(dev, "desktoppool", "bapps").get("status") or {}
            names = [d["name"] for d in st.get("desktops") or []]
            if not names:
                return False
            vm = _get(dev, "virtualmachine", names[0]).get("status") or {}
            console = Path(vm.get("consoleLog") or "/nonexistent")
            ready = console.exists() and appguest.READY_MARKER in console.read_text(
                errors="replace"
            )
            return ready

        await _until(server_up, within=BOOT_S, what="the application server up")
        apps: list[float] = []
        for k in range(args.sessions):
            took, _ = await _claim_to_screen(dev, b, "bapps", f"a{k}", app=True)
            apps.append(took)
            log(f"application session {k + 1}: {took:.2f} s")
    doubled = next((k + 1 for k, t in enumerate(apps) if t > 2 * apps[0]), None)
    return {
        "desktop_s": desk,
        "app_s": apps,
        "desktop_p50_s": _pct(desk, 0.5),
        "desktop_p95_s": _pct(desk, 0.95),
        "app_p50_s": _pct(apps, 0.5),
        "app_p95_s": _pct(apps, 0.95),
        "app_first_s": apps[0],
        "sessions_before_doubling": (doubled - 1) if doubled else f">={len(apps)}",
        "mean_app_s": statistics.mean(apps),
    }


def setup(dev: devcluster.DevCluster, port: int) -> None:
    example = yaml.safe_load((REPO / "docs/examples/vmtemplate.yaml").read_text())
    spec = example["spec"]
    spec["memory"] = "192Mi"
    spec["disks"] = [
        {"name": "root", "image": "tiny", "size": "1Gi", "clone": "linked", "storage": "local"}
    ]
    spec["boot"]["cmdline"] = guest.kernel_cmdline()
    _apply(dev, "VMTemplate", "bdesk", spec)
    cmdline = appguest.kernel_cmdline(ip=f"{SERVER_IP}/24")
    _apply(dev, "VMTemplate", "bapps", appguest.machine_spec(key_secret=None, cmdline=cmdline))


def table(r: dict[str, Any], args: argparse.Namespace) -> str:
    rows = [
        "| claim -> screen in the browser | n | p50 s | p95 s |",
        "|---|---|---|---|",
        f"| desktop with a spare (baseline) | {len(r['desktop_s'])} | "
        f"{r['desktop_p50_s']:.2f} | {r['desktop_p95_s']:.2f} |",
        f"| published application (1 server, sessions kept open) | {len(r['app_s'])} | "
        f"{r['app_p50_s']:.2f} | {r['app_p95_s']:.2f} |",
        "",
        "session k on one server: " + ", ".join(f"{t:.2f}" for t in r["app_s"]) + " s",
        f"sessions before start time doubles: {r['sessions_before_doubling']}",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--desktops", type=int, default=5)
    p.add_argument("--sessions", type=int, default=6)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("apps.py needs root (a dev cluster)", file=sys.stderr)
        return 2
    appguest.require_app_guest()
    port = _free_port()
    os.environ["KUBEVISOR_GATEWAY_URL"] = f"http://127.0.0.1:{port}"
    dev = devcluster.up(CLUSTER, nodes_count=1, stop_timeout=5.0,
                        agent_args=("--address=127.0.0.1",))  # fmt: skip
    try:
        setup(dev, port)
        argv_gw = [
            str(REPO / ".venv/bin/kubevisor-gateway"), f"--kubeconfig={dev.kubeconfig}",
            f"--key-namespace={KEY_NS}", "--host=127.0.0.1", f"--port={port}",
            f"--display-netns=kv-{CLUSTER}-{{node}}", "--recheck-seconds=1",
        ]  # fmt: skip
        gw_log = dev.cluster_dir / "logs" / f"gateway-{uuid.uuid4().hex[:4]}.log"
        with testing.running_process(argv_gw, log=gw_log, what="gateway"):
            testing.wait_for(
                lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0,
                timeout=30, what="the gateway listening",
            )  # fmt: skip
            result = asyncio.run(measure(dev, args))
    finally:
        for kind in ("desktopclaims", "desktoppools"):
            dev.run_kubectl("delete", kind, "--all", "--wait=true", "--timeout=120s")
        devcluster.down(CLUSTER)
    print(table(result, args))
    line = {"bench": "apps", "desktops": args.desktops, "sessions": args.sessions, **result}
    print(json.dumps(line, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
