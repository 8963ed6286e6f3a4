"""The Debian application guest: where its image lives, how to build it, a VM spec for it.

Why: ssh, X11 forwarding and published applications need a guest with a real sshd and
real X clients (openssh-server, xauth, xeyes, xterm), which the busybox guest has not.
``hack/build-appguest.sh`` builds it (mmdebstrap minbase, the tiny guest's kernel) into
the cache beside the tiny guest; docs/dev/appguest.md describes it. Its keys come from
the VM's ``access.sshKeySecret`` at boot (api/vmaccess), never from the image.
"""

from __future__ import annotations

import base64
import dataclasses
import subprocess
from pathlib import Path
from typing import Any

from kubevisor.devenv import guest, testing

BUILD_SCRIPT = guest.REPO_ROOT / "hack" / "build-appguest.sh"
#: The image's name in a node's image directory (a disk's ``image:``).
IMAGE_NAME = "appguest"
#: Where a dev cluster's nodes find it (``devenv.cluster.ensure_images`` links it).
NODE_IMAGE_DIR = Path("/var/lib/kubevisor/images") / IMAGE_NAME

BOOTED_MARKER = "kubevisor-appguest: booted"
SSHD_MARKER = "kubevisor-appguest: sshd up"
READY_MARKER = "kubevisor-appguest: ready"
"""Printed on the serial console once eth0 is configured, the keys are written and sshd
listens on port 22."""


@dataclasses.dataclass(frozen=True)
class AppImage:
    """Paths of the built guest: kernel, initramfs, and the root disk (qcow2, ext4)."""

    kernel: Path
    initrd: Path
    root_disk: Path


def app_image_paths(base: Path | None = None) -> AppImage:
    """Where the build script puts the image (may not exist yet); ``base``: the cache's
    ``images`` directory by default, or a node's image directory."""
    out = (base or guest.cache_dir() / "images") / IMAGE_NAME
    return AppImage(
        kernel=out / "vmlinuz", initrd=out / "initrd.img", root_disk=out / f"{IMAGE_NAME}.qcow2"
    )


def ensure_app_image() -> AppImage:
    """Build the image if missing or stale (a no-op in well under a second when up to
    date; about half a minute with a warm apt cache otherwise)."""
    subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True)
    return app_image_paths()


def require_app_guest() -> AppImage:
    """``testing.absent`` unless the image is built (hack/setup builds it)."""
    image = app_image_paths()
    if not image.root_disk.exists():
        testing.absent(f"app guest missing in {image.root_disk.parent}: run hack/build-appguest.sh")
    return image


def kernel_cmdline(
    *,
    ip: str | None = None,
    gateway: str | None = None,
    hostname: str | None = None,
    script: str | None = None,
) -> str:
    """The guest's kernel command line (the keys are appended by the controller)."""
    parts = ["console=ttyS0", "quiet", "panic=-1", "no_timer_check", "root=/dev/vda"]
    if ip:
        parts.append(f"kv.ip={ip}")
    if gateway:
        parts.append(f"kv.gw={gateway}")
    if hostname:
        parts.append(f"kv.hostname={hostname}")
    if script:
        parts.append("kv.script=" + base64.b64encode(script.encode()).decode())
    return " ".join(parts)


def machine_spec(
    *,
    key_secret: str | None,
    cmdline: str | None = None,
    memory: str = "384Mi",
    storage: str = "local",
    network: str = "default",
) -> dict[str, Any]:
    """A VM's or VMTemplate's machine fields (wire form) booting this guest on the dev
    cluster: the kernel and initramfs from the node's image directory, a linked clone of
    the root disk, one NIC, ``access.sshKeySecret``."""
    node = app_image_paths(NODE_IMAGE_DIR.parent)
    spec: dict[str, Any] = {
        "cpu": {"cores": 1},
        "memory": memory,
        "disks": [
            {
                "name": "root",
                "image": IMAGE_NAME,
                "size": "2Gi",
                "clone": "linked",
                "storage": storage,
            }
        ],
        "nics": [{"name": "eth0", "network": network}],
        "boot": {
            "kernel": str(node.kernel),
            "initrd": str(node.initrd),
            "cmdline": cmdline or kernel_cmdline(),
        },
        "display": {"vnc": False},
        "console": {"serial": True},
    }
    if key_secret is not None:
        spec["access"] = {"sshKeySecret": key_secret}
    return spec
