"""A VRF's resource context: one cgroup with CPU and memory limits, v1 or v2.

The VRF's processes (its routing daemon, or anything started with
`VRFRealizer.launch`) run in this cgroup, so a busy VRF cannot starve the node; usage is
read back for the VRF's status. It lives next to the netlink code because it is the same
kind of thing: a thin adapter over a kernel interface, driven by plain planned data.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path
from typing import Literal

from kubevisor.agent.vrfs import planning, specs

CGROUP_ROOT = Path("/sys/fs/cgroup")
Version = Literal["v1", "v2", "none"]


def detect_version(root: Path = CGROUP_ROOT) -> Version:
    """v2 when the unified hierarchy offers cpu and memory; else v1 with both; else none."""
    controllers = root / "cgroup.controllers"
    if controllers.exists() and {"cpu", "memory"} <= set(controllers.read_text().split()):
        return "v2"
    if (root / "cpu" / "cpu.cfs_quota_us").exists() and (root / "memory").is_dir():
        return "v1"
    return "none"


class CgroupContext:
    """The cgroup of one VRF: ``<root>/<controller>/<parent>/<name>`` (v1) or
    ``<root>/<parent>/<name>`` (v2)."""

    def __init__(self, name: str, *, parent: str = "kubevisor", root: Path = CGROUP_ROOT) -> None:
        self.name = name
        self.version = detect_version(root)
        self._root = root
        self._parent = parent

    def _dirs(self) -> dict[str, Path]:
        if self.version == "v2":
            return {"unified": self._root / self._parent / self.name}
        if self.version == "v1":
            return {
                c: self._root / c / self._parent / self.name for c in ("cpu", "cpuacct", "memory")
            }
        return {}

    def exists(self) -> bool:
        """Whether any of the VRF's cgroup directories is there."""
        return any(d.is_dir() for d in self._dirs().values())

    def ensure(self, limits: planning.Limits) -> None:
        """Create the cgroup (idempotent) and write the limits."""
        dirs = self._dirs()
        if self.version == "v2":
            parent = self._root / self._parent
            parent.mkdir(exist_ok=True)
            _enable_controllers(self._root)
            _enable_controllers(parent)
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        quota, memory = limits.cpu_quota_us, limits.memory_bytes
        if self.version == "v1":
            _write(dirs["cpu"] / "cpu.cfs_period_us", str(limits.cpu_period_us))
            _write(dirs["cpu"] / "cpu.cfs_quota_us", str(quota if quota else -1))
            _write(dirs["memory"] / "memory.limit_in_bytes", str(memory if memory else -1))
        elif self.version == "v2":
            unified = dirs["unified"]
            _write(unified / "cpu.max", f"{quota or 'max'} {limits.cpu_period_us}")
            _write(unified / "memory.max", str(memory) if memory else "max")

    def limits(self) -> planning.Limits:
        """Limits as the kernel holds them (to detect drift and for tests)."""
        dirs = self._dirs()
        if self.version == "v1":
            quota = int(_read(dirs["cpu"] / "cpu.cfs_quota_us"))
            period = int(_read(dirs["cpu"] / "cpu.cfs_period_us"))
            memory = int(_read(dirs["memory"] / "memory.limit_in_bytes"))
            return planning.Limits(
                cpu_quota_us=quota if quota > 0 else None,
                cpu_period_us=period,
                memory_bytes=memory if memory < 2**62 else None,
            )
        if self.version == "v2":
            cpu_quota, period_text = _read(dirs["unified"] / "cpu.max").split()
            memory_text = _read(dirs["unified"] / "memory.max")
            return planning.Limits(
                cpu_quota_us=None if cpu_quota == "max" else int(cpu_quota),
                cpu_period_us=int(period_text),
                memory_bytes=None if memory_text == "max" else int(memory_text),
            )
        return planning.Limits()

    def procs_files(self) -> list[Path]:
        """The ``cgroup.procs`` files a process writes its pid to, to join the context."""
        return [path / "cgroup.procs" for path in self._dirs().values()]

    def add(self, pid: int) -> None:
        """Move a process into the context (its memory charged before stays outside)."""
        for path in self.procs_files():
            _write(path, str(pid))

    def pids(self) -> set[int]:
        """Processes in the context."""
        found: set[int] = set()
        for path in self._dirs().values():
            try:
                found |= {int(p) for p in _read(path / "cgroup.procs").split()}
            except FileNotFoundError:
                pass
        return found

    def usage(self) -> specs.UsageStatus:
        """CPU seconds consumed and memory in use by the context's processes."""
        dirs = self._dirs()
        if self.version == "v1":
            return {
                "cpuSeconds": int(_read(dirs["cpuacct"] / "cpuacct.usage")) / 1e9,
                "memoryBytes": int(_read(dirs["memory"] / "memory.usage_in_bytes")),
            }
        if self.version == "v2":
            stat = dict(line.split() for line in _read(dirs["unified"] / "cpu.stat").splitlines())
            return {
                "cpuSeconds": int(stat["usage_usec"]) / 1e6,
                "memoryBytes": int(_read(dirs["unified"] / "memory.current")),
            }
        return {"cpuSeconds": 0.0, "memoryBytes": 0}

    def oom_kills(self) -> int:
        """How many processes the kernel killed for going over the context's memory
        limit (v1 ``memory.oom_control``, v2 ``memory.events``: ``oom_kill``); 0 when it
        does not count them or the cgroup is gone."""
        dirs = self._dirs()
        files = {"v1": ("memory", "memory.oom_control"), "v2": ("unified", "memory.events")}
        if self.version not in files:
            return 0
        where, file = files[self.version]
        try:
            text = _read(dirs[where] / file)
        except OSError:  # gone, or a kernel without the file: nothing counted
            return 0
        counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        return int(counts.get("oom_kill", 0))

    def remove(self, *, timeout: float = 10.0) -> None:
        """Kill the context's processes and delete the cgroup (and an empty parent)."""
        deadline = time.monotonic() + timeout
        while pids := self.pids():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"processes {sorted(pids)} survive in cgroup {self.name}")
            time.sleep(0.01)
        for path in self._dirs().values():
            for directory in (path, path.parent):
                try:
                    directory.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as error:
                    if error.errno not in (errno.ENOTEMPTY, errno.EBUSY):
                        raise
                    break


def _enable_controllers(path: Path) -> None:
    control = path / "cgroup.subtree_control"
    enabled = set(_read(control).split())
    for controller in ("cpu", "memory"):
        if controller not in enabled:
            _write(control, f"+{controller}")


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)
