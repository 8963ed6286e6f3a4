"""The tiny test guest: where its image lives, how to build it, a domain XML for it.

Why: e2e tests (boot, migration, VRF inside a guest) need one small, fast guest; keeping
its paths and a ready domain XML here means every test boots it the same way. The image
is built by ``hack/build-guest.sh`` (Debian kernel + busybox initramfs) into a cache
outside the repository.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import subprocess
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-guest.sh"

BOOTED_MARKER = "kubevisor-guest: booted"
READY_MARKER = "kubevisor-guest: ready"
MAC_MARKER = "kubevisor-guest: eth0 mac="
TICK_MARKER = "kubevisor-guest: tick "
TICKER_SCRIPT = (
    '(i=0; while :; do i=$((i+1)); echo "kubevisor-guest: tick $i" >/dev/console; sleep 1; done) &'
)
"""A ``kv.script`` printing a counter on the console every second. The guest's own proof
of life: a guest that was reset boots again (BOOTED_MARKER) and counts from 1; one that
kept running (paused, adopted, migrated) continues where it was."""

DIRTY_MARKER = "kubevisor-guest: dirtying"
DIRTIER_SCRIPT = (
    "mount -t tmpfs -o size=100m tmpfs /mnt; "
    "dd if=/dev/urandom of=/mnt/a bs=1M count=32 2>/dev/null; "
    f'echo "{DIRTY_MARKER}" >/dev/console; '
    "(while :; do cp /mnt/a /mnt/b; done) & " + TICKER_SCRIPT
)
"""A ``kv.script`` that rewrites 32 MiB of random data forever (and ticks): pages QEMU
cannot skip as zero pages, dirtied faster than a throttled pre-copy sends them, so a
migration of it converges only through post-copy (or not at all)."""


@dataclasses.dataclass(frozen=True)
class ConsoleMark:
    """Where a console log stood: offset in its text (at a line end), last tick, boots."""

    offset: int
    tick: int
    boots: int


def _ticks(text: str) -> list[int]:
    return [int(n) for n in re.findall(re.escape(TICK_MARKER) + r"(\d+)\s*$", text, re.M)]


def console_mark(console: Path) -> ConsoleMark:
    """The console log's state now (only whole lines)."""
    text = console.read_text(errors="replace")
    text = text[: text.rfind("\n") + 1]
    ticks = _ticks(text)
    return ConsoleMark(
        offset=len(text), tick=ticks[-1] if ticks else 0, boots=text.count(BOOTED_MARKER)
    )


def kept_running(console: Path, since: ConsoleMark) -> bool:
    """True once the guest printed its next tick after ``since``; AssertionError when it
    booted again or its counter does not continue (the guest was reset, not kept)."""
    text = console.read_text(errors="replace")
    later = text[since.offset :]
    assert BOOTED_MARKER not in later, f"the guest booted again: {later[-500:]!r}"
    ticks = _ticks(later[: later.rfind("\n") + 1])
    if not ticks:
        return False
    assert ticks[0] == since.tick + 1, f"counter went {since.tick} -> {ticks[0]}: reset"
    return True


@dataclasses.dataclass(frozen=True)
class TinyImage:
    """Paths of the built guest: kernel, initramfs and an empty 64 MiB qcow2 base."""

    kernel: Path
    initrd: Path
    base_disk: Path


def cache_dir() -> Path:
    """``$KUBEVISOR_CACHE`` or ``/var/cache/kubevisor`` (same rule as the build script)."""
    return Path(os.environ.get("KUBEVISOR_CACHE", "/var/cache/kubevisor"))


def tiny_image_paths() -> TinyImage:
    """Where the build script puts the tiny image (may not exist yet)."""
    out = cache_dir() / "images" / "tiny"
    return TinyImage(
        kernel=out / "vmlinuz", initrd=out / "initrd.img", base_disk=out / "tiny.qcow2"
    )


def ensure_tiny_image() -> TinyImage:
    """Build the tiny image if missing or stale (a no-op in ~0.1 s when up to date)."""
    subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True)
    return tiny_image_paths()


def create_linked_disk(path: Path, *, base: Path) -> None:
    """A qcow2 overlay on ``base`` (a linked clone); the base is never written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(path)],
        check=True,
        capture_output=True,
        text=True,
    )


def bootable_disk(path: Path, *, cmdline: str, size_mib: int = 32) -> None:
    """A raw disk image a BIOS boots: a FAT file system holding the tiny kernel and
    initramfs with SYSLINUX in its boot sector (a "superfloppy": no partition table),
    booting them with ``cmdline``. Built without mounting anything (mkfs.vfat, mtools'
    mcopy, ``syslinux --install``), so a guest can boot its whole system from a disk —
    an iSCSI LUN in the storage tests — instead of a kernel given on the host."""
    image = ensure_tiny_image()
    path.unlink(missing_ok=True)
    config = path.with_suffix(".syslinux.cfg")
    config.write_text(
        "SERIAL 0 115200\nDEFAULT tiny\nPROMPT 0\nTIMEOUT 0\nLABEL tiny\n  KERNEL vmlinuz\n"
        f"  INITRD initrd.img\n  APPEND {cmdline}\n"
    )
    try:
        for argv in (
            ["mkfs.vfat", "-C", "-n", "KVBOOT", str(path), str(size_mib * 1024)],
            ["mcopy", "-i", str(path), str(image.kernel), str(image.initrd), "::/"],
            ["mcopy", "-i", str(path), str(config), "::/syslinux.cfg"],
            ["syslinux", "--install", str(path)],
        ):
            subprocess.run(argv, check=True, capture_output=True, text=True)
    finally:
        config.unlink(missing_ok=True)


def kernel_cmdline(
    *, ip: str | None = None, gateway: str | None = None, script: str | None = None
) -> str:
    """Guest kernel command line: serial console plus the tiny init's ``kv.*`` options.

    ``no_timer_check``: under TCG on a loaded host the kernel's IO-APIC timer check can
    misfire and panic the guest at boot; the check proves nothing about our code.
    """
    parts = ["console=ttyS0", "quiet", "panic=-1", "no_timer_check"]
    if ip:
        parts.append(f"kv.ip={ip}")
    if gateway:
        parts.append(f"kv.gw={gateway}")
    if script:
        parts.append("kv.script=" + base64.b64encode(script.encode()).decode())
    return " ".join(parts)


def tiny_domain_xml(
    name: str,
    *,
    image: TinyImage,
    disk: Path,
    console_log: Path,
    bridge: str = "kvbr0",
    mac: str | None = None,
    memory_mib: int = 256,
    vcpus: int = 1,
    cmdline: str | None = None,
) -> str:
    """A TCG domain booting the tiny image directly, one virtio NIC on ``bridge``.

    ``type='qemu'`` because /dev/kvm cannot run guests on the CI machine; the serial
    console goes to ``console_log`` (put it on shared storage to keep one log across a
    migration). The disk uses ``cache='none'`` as libvirt expects for migration.
    """
    mac_xml = f"<mac address={quoteattr(mac)}/>" if mac else ""
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(image.kernel))}</kernel>
    <initrd>{escape(str(image.initrd))}</initrd>
    <cmdline>{escape(cmdline or kernel_cmdline())}</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file={quoteattr(str(disk))}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      {mac_xml}
      <source bridge={quoteattr(bridge)}/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path={quoteattr(str(console_log))} append='on'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


SCSI_MARKER = "kubevisor-guest: scsi "
#: Waits (up to 30 s) for the SCSI scan, then prints each sd disk with its size and the
#: model the device answers to an INQUIRY, and the driver its host adapter is bound to;
#: then reads sda's first sector (``kubevisor-guest: scsi-read bytes=512``).
SCSI_SCRIPT = (
    "i=0; while [ ! -e /sys/block/sda ] && [ $i -lt 300 ]; do usleep 100000; i=$((i+1)); done; "
    "for b in /sys/block/sd*; do d=$(basename $b); "
    'echo "kubevisor-guest: scsi $d sectors=$(cat $b/size) '
    "model=$(cat $b/device/model | tr -d ' ') "
    'driver=$(basename $(readlink -f $b/device/../../../driver))"; done; '
    "dd if=/dev/sda bs=512 count=1 2>/dev/null | wc -c | "
    'sed "s/^/kubevisor-guest: scsi-read bytes=/"'
)


def scsi_disks(console_text: str) -> list[tuple[str, str, str, str]]:
    """(device, sectors, model, driver) of each SCSI disk :data:`SCSI_SCRIPT` printed."""
    return re.findall(
        re.escape(SCSI_MARKER) + r"(\S+) sectors=(\d+) model=(\S+) driver=(\S+)", console_text
    )
