"""The l3mdev (``backend: vrf``) path in a QEMU guest running Debian's kernel.

The host kernel has no l3mdev VRF (nor 802.1Q), so this module boots a tiny TCG guest
whose initramfs carries a trimmed CPython, pyroute2, the kubevisor package and
`tests/integration/vrf_guest/guest_vrf.py`, which runs the unchanged realizer there.
It skips, saying why, when the guest image, qemu, or the Python/pyroute2 the overlay
copies are not where `vrf_guest/build-overlay.sh` expects them.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "tests" / "integration" / "vrf_guest"
#: What build-overlay.sh copies into the guest (keep in step with the script).
GUEST_PYTHON = Path(os.environ.get("KUBEVISOR_GUEST_PYTHON", "/root/.pyenv/versions/3.11.7"))
PYROUTE2 = REPO / ".venv" / "lib" / "python3.11" / "site-packages" / "pyroute2"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True)


GUEST_DIR = Path(os.environ.get("KUBEVISOR_CACHE", "/var/cache/kubevisor")) / "images" / "tiny"


def test_l3mdev_backend_in_a_guest(tmp_path: Path) -> None:
    """The vrf (l3mdev) backend, product code unchanged, inside a Debian-kernel guest.

    The host kernel has no l3mdev VRF, so a tiny QEMU (TCG) guest boots the Debian kernel
    with an overlay initramfs carrying CPython, pyroute2, kubevisor and a guest program
    (`vrf_guest/guest_vrf.py`) that applies red and blue, checks tables, drift, the l3mdev
    rule and removal, and prints PASS/FAIL lines and KV-GUEST-OK.
    """
    needed = [GUEST_DIR / "vmlinuz", GUEST_DIR / "initrd.img"]
    if not all(p.exists() for p in needed) or not shutil.which("qemu-system-x86_64"):
        pytest.skip(f"guest image {GUEST_DIR} (hack/build-guest.sh) or qemu missing")
    missing = [
        str(p)
        for p in (
            GUEST_PYTHON / "bin" / "python3.11",
            GUEST_PYTHON / "lib" / "libpython3.11.so.1.0",
            PYROUTE2,
        )
        if not p.exists()
    ]
    if missing:
        pytest.skip(f"the guest overlay copies {', '.join(missing)}, which is missing here")
    repo = REPO
    overlay = tmp_path / "overlay.gz"
    _run(
        "bash", str(HERE / "build-overlay.sh"), str(overlay), str(repo), str(HERE / "guest_vrf.py")
    )
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
