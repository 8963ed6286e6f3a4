"""The l3mdev (``backend: vrf``) path in a QEMU guest running Debian's kernel.

The host kernel has no l3mdev VRF (nor 802.1Q), so this module boots a tiny TCG guest
whose initramfs carries a trimmed CPython, pyroute2, the kubevisor package and
`tests/integration/vrf_guest/guest_vrf.py`, which runs the unchanged realizer there; the
BIRD test adds this host's Debian bird/birdc (and the libraries they link) and runs
`guest_vrf_bird.py`, the product's supervisor with BIRD bound to l3mdev devices.
The guest's CPython is the one running this test (the .venv's base interpreter, so
whatever Python `hack/setup` built the venv from); the only skip is a missing guest image
or qemu, both of which `hack/setup` provides.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pyroute2
import pytest

from kubevisor.devenv import guest, testing

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "tests" / "integration" / "vrf_guest"


def _guest_python_env() -> dict[str, str]:
    """Where build-overlay.sh finds the interpreter it copies: this test's own."""
    binary = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    return {
        "KV_GUEST_PY_BIN": binary,
        "KV_GUEST_PY_STDLIB": sysconfig.get_paths()["stdlib"],
        "KV_GUEST_PY_VER": f"{sys.version_info.major}.{sys.version_info.minor}",
        "KV_GUEST_PYROUTE2": str(Path(pyroute2.__file__).parent),
    }


def _run(*argv: str, programs: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **_guest_python_env(), "KV_GUEST_PROGRAMS": " ".join(programs)}
    return subprocess.run(argv, capture_output=True, text=True, check=True, env=env)


GUEST_DIR = guest.cache_dir() / "images" / "tiny"


def test_l3mdev_backend_in_a_guest(tmp_path: Path) -> None:
    """The vrf (l3mdev) backend, product code unchanged, inside a Debian-kernel guest.

    The host kernel has no l3mdev VRF, so a tiny QEMU (TCG) guest boots the Debian kernel
    with an overlay initramfs carrying CPython, pyroute2, kubevisor and a guest program
    (`vrf_guest/guest_vrf.py`) that applies red and blue, checks tables, drift, the l3mdev
    rule and removal, and prints PASS/FAIL lines and KV-GUEST-OK.
    """
    testing.require_tiny_guest(GUEST_DIR.parent)
    testing.require_tools("qemu-system-x86_64")
    _boot(tmp_path, HERE / "guest_vrf.py")


def test_bird_bound_to_l3mdev_devices_in_a_guest(tmp_path: Path) -> None:
    """Issue 18 on the l3mdev backend: BIRD bound to each VRF's device, through the
    product's supervisor, in a Debian-kernel guest (`vrf_guest/guest_vrf_bird.py`).

    red and peer run BGP over red's segment; blue has red's address and neighbour on its
    own segment. peer's prefix lands in red's table and not in blue's nor the main one;
    each BIRD is in its VRF's cgroup with the 64Mi limit. The guest carries this host's
    Debian bird and birdc with the libraries they link (the tiny guest has no libc).
    """
    testing.require_tiny_guest(GUEST_DIR.parent)
    testing.require_tools("qemu-system-x86_64", "bird", "birdc")
    programs = tuple(str(shutil.which(p)) for p in ("bird", "birdc"))
    _boot(tmp_path, HERE / "guest_vrf_bird.py", programs)


def _boot(tmp_path: Path, program: Path, programs: tuple[str, ...] = ()) -> None:
    """Build the overlay with ``program`` (and host ``programs``), boot the guest on it and
    assert the program printed KV-GUEST-OK."""
    repo = REPO
    overlay = tmp_path / "overlay.gz"
    _run(
        "bash", str(HERE / "build-overlay.sh"), str(overlay), str(repo), str(program),
        programs=programs,
    )  # fmt: skip
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes((GUEST_DIR / "initrd.img").read_bytes() + overlay.read_bytes())
    script = base64.b64encode(b"sh /kv/run.sh; echo KV-DONE; poweroff -f").decode()
    console = tmp_path / "console.log"
    qemu = subprocess.Popen(
        [
            "qemu-system-x86_64",
            "-machine",
            "pc,accel=tcg",
            "-m",
            "1024",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
            "-kernel",
            str(GUEST_DIR / "vmlinuz"),
            "-initrd",
            str(initrd),
            "-append",
            f"console=ttyS0 panic=-1 kv.script={script}",
            "-serial",
            f"file:{console}",
            "-monitor",
            "none",
            "-display",
            "none",
            "-nic",
            "none",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        qemu.wait(timeout=500)  # the guest powers itself off after the program
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
    text = console.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith(("PASS", "FAIL", "KV-"))]
    print("\n".join(lines))
    assert "KV-GUEST-OK" in text, text[-4000:]
