"""Run each VRF's routing daemon in its context: validate, start, reload, restart, stop, adopt.

The adapter half of `kubevisor.agent.vrfs.daemons` (which decides), the same for every
daemon: what differs between BIRD and FRR (argv, parser, reload, show commands, extra
processes) is a `Driver`, one module per daemon (`bird`, `frr`). The VRF loop calls,
every pass, ``await supervisor.ensure(name, wanted)`` for each VRF it realized, then
``sweep(keep)``; before removing a VRF it calls ``stop(name)``. Level-based: the facts are
read again on every call (the pid file checked against ``/proc/PID/cmdline``, the config
file the daemon runs), so a restarted agent adopts a daemon it finds running instead of
starting a second one. Only restart counts and the time of the next restart live in
memory: an agent restart forgets a backoff, never a daemon.

- A config that is not the applied one is written as the candidate and checked with the
  daemon's parser first (``bird -p``, ``vtysh --dryrun``); a refusal becomes reason
  InvalidDaemonConfig with the parser's message and leaves the running daemon (and its
  config file) untouched.
- A change is loaded into the running daemon (``birdc configure``, ``frr-reload``), then
  the candidate becomes the config file: reloaded, never restarted.
- The daemon starts through `VRFRealizer.launch` (the VRF's namespace and cgroup) in its
  own session, and counts as started once its control socket is there.
- A death is seen at once (a pidfd on the event loop wakes the VRF loop) and the daemon
  comes back after 1 s doubling to 60 s (`daemons.restart_delay`); a death with new OOM
  kills in the VRF's cgroup is reported as DaemonOutOfMemory (its memory limit's doing).

Blocking work (files, /proc, parsers, reloads, waiting for the socket) runs in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kubevisor.agent.kernel import vrfrealizing
from kubevisor.agent.vrfs import bird, daemons, frr, processes, sessions, specs
from kubevisor.api import vrfrouting
from kubevisor.api.conditions import Reason

logger = logging.getLogger(__name__)

#: How long a starting daemon has to open its control socket.
START_TIMEOUT = 10.0
#: How long a stopped daemon has after SIGTERM before SIGKILL.
STOP_TIMEOUT = 5.0


class Driver(Protocol):
    """What the supervisor needs of one daemon; each is a module (`bird`, `frr`)."""

    NAME: daemons.Daemon
    RELOAD_TOOL: str

    def argv(self, f: daemons.Files, *, user: str | None = ..., config: str = ...) -> list[str]: ...
    def validate_argv(self, path: Path, *, user: str | None = ...) -> list[str]: ...
    def reload_argv(self, path: Path) -> list[str]: ...
    def reloaded(self, output: str, returncode: int) -> bool: ...
    def is_ours(self, cmdline: list[str], f: daemons.Files) -> bool: ...
    def processes_for(self, config: str) -> tuple[str, ...]: ...
    def refusal_message(self, parser_output: str, candidate: Path) -> str: ...
    def installed(self) -> bool: ...
    def version(self) -> str | None: ...
    def prepare(self, f: daemons.Files) -> None: ...
    def leftovers(self, f: daemons.Files) -> list[int]: ...
    def read_sessions(self, f: daemons.Files, config: str = ...) -> sessions.Summary | None: ...


#: The daemon module of each ``routing.daemon``.
DRIVERS: dict[daemons.Daemon, Driver] = {"bird": bird, "frr": frr}


def installed() -> frozenset[str]:
    """The daemons whose programs are on this node (blocking: call in a thread)."""
    return frozenset(name for name, driver in DRIVERS.items() if driver.installed())


def version(daemon: daemons.Daemon = "bird") -> str | None:
    """The daemon's version (``bird --version``, ``zebra --version``); None when its
    program is missing (blocking)."""
    return DRIVERS[daemon].version()


@dataclass(frozen=True)
class Account:
    """The account the daemon runs as: its name (for ``-u``/``-g``), uid and gid (the run
    directory is given to it, for the socket and the pid file)."""

    name: str
    uid: int
    gid: int


def account(name: str = daemons.USERS["bird"]) -> Account | None:
    """The daemon's account on this node, or None (then it runs as root)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return Account(name, entry.pw_uid, entry.pw_gid)


def _run_dir(f: daemons.Files, user: Account | None) -> None:
    f.run_dir.mkdir(parents=True, exist_ok=True)
    if user is not None:
        os.chown(f.run_dir, user.uid, user.gid)


def find_pid(f: daemons.Files) -> int | None:
    """The pid of this VRF's live daemon, from its pid file checked against /proc."""
    return processes.find_pid(f, DRIVERS[f.daemon].is_ours)


def validate(f: daemons.Files, config: str, user: Account | None = None) -> str | None:
    """Write ``config`` as the candidate and run the daemon's parser over it (as ``user``
    where the daemon's parser can read files): None when accepted, else its message as a
    sentence (the candidate is removed again)."""
    driver = DRIVERS[f.daemon]
    _run_dir(f, user)
    f.candidate.write_text(config)
    try:
        done = subprocess.run(
            driver.validate_argv(f.candidate, user=user.name if user else None),
            capture_output=True,
            text=True,
            timeout=processes.TOOL_TIMEOUT,
            cwd=f.run_dir,
        )
    except subprocess.TimeoutExpired:
        f.candidate.unlink(missing_ok=True)
        return f"{f.daemon}'s parser did not answer within 30 s; routing.config is not applied."
    if done.returncode == 0:
        return None
    f.candidate.unlink(missing_ok=True)
    return driver.refusal_message(done.stderr + done.stdout, f.candidate)


def reload(f: daemons.Files, config: str) -> str | None:
    """Load the candidate into the running daemon, then make it the applied config; None
    on success, else what the reload tool said."""
    driver = DRIVERS[f.daemon]
    if processes.read(f.candidate) != config:
        f.candidate.write_text(config)
    try:
        done = subprocess.run(
            driver.reload_argv(f.candidate),
            capture_output=True,
            text=True,
            timeout=processes.TOOL_TIMEOUT,
            cwd=f.run_dir,
        )
    except subprocess.TimeoutExpired:
        return f"{f.daemon}'s reload did not answer within 30 s"
    out = (done.stdout + done.stderr).strip()
    if not driver.reloaded(out, done.returncode):
        return f"{driver.RELOAD_TOOL} failed: {' / '.join(out.splitlines()[-2:])}"
    os.replace(f.candidate, f.config)
    return None


def prepare_start(f: daemons.Files, config: str, user: Account | None = None) -> None:
    """The files a start needs: the run directory (``user``'s), the config file with
    ``config`` (from the validated candidate when it is one), no stale socket or pid
    file, a fresh log, and what the daemon's module adds."""
    _run_dir(f, user)
    if processes.read(f.candidate) == config:
        os.replace(f.candidate, f.config)
    elif processes.read(f.config) != config:
        f.config.write_text(config)
    for stale in (f.socket, f.pid_file, f.log):
        stale.unlink(missing_ok=True)
    DRIVERS[f.daemon].prepare(f)


def wait_started(f: daemons.Files, process: subprocess.Popen[bytes]) -> bool:
    """Whether the daemon opened its control socket before exiting or `START_TIMEOUT`."""
    return processes.wait_started(f, process, timeout=START_TIMEOUT)


def terminate(pid: int | None, f: daemons.Files, child: subprocess.Popen[bytes] | None) -> None:
    """Stop the daemon (SIGTERM, SIGKILL after `STOP_TIMEOUT`, reaped if it is our child),
    kill what is left of its other processes (an FRR group's), then remove the run
    directory."""
    processes.stop(pid, child, timeout=STOP_TIMEOUT)
    for left in DRIVERS[f.daemon].leftovers(f):
        with contextlib.suppress(ProcessLookupError):
            os.kill(left, signal.SIGKILL)
    shutil.rmtree(f.run_dir, ignore_errors=True)


def read_sessions(f: daemons.Files, config: str = "") -> sessions.Summary | None:
    """The running daemon's sessions and routes, asked over its control socket (None when
    it does not answer; blocking)."""
    return DRIVERS[f.daemon].read_sessions(f, config)


@dataclass(frozen=True)
class Report:
    """One VRF's daemon after a pass: its status entry and why it keeps the VRF from
    Ready (None: it does not)."""

    status: specs.DaemonStatus | None
    problem: daemons.Problem | None


class Supervisor:
    """The routing daemons of one node's VRFs. ``on_change`` asks the VRF loop for a pass
    (a daemon died, or its restart is due)."""

    def __init__(
        self,
        realizer: vrfrealizing.VRFRealizer,
        *,
        on_change: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        user: str | None = daemons.USERS["bird"],
        users: dict[daemons.Daemon, str | None] | None = None,
    ) -> None:
        self.realizer = realizer
        #: The account per daemon (``user`` is BIRD's, kept for callers that set it).
        self.user_names: dict[daemons.Daemon, str | None] = {**daemons.USERS, "bird": user}
        self.user_names.update(users or {})
        self.users: dict[daemons.Daemon, Account | None] = {}
        self.naming = realizer.naming
        self.on_change = on_change
        self.clock = clock
        self.versions: dict[daemons.Daemon, str | None] = {}
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._running: dict[str, float] = {}  # name -> when seen started/adopted
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._exit: dict[str, str] = {}
        self._watches: dict[str, tuple[int, int]] = {}  # name -> (pid, pidfd)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._refusals: dict[tuple[str, str], str | None] = {}  # (name, config) -> refusal
        self._oom_base: dict[str, int] = {}  # name -> its cgroup's OOM kills at start
        self._oom: set[str] = set()  # VRFs whose daemon's last death was an OOM kill

    def files(self, name: str, daemon: daemons.Daemon = "bird") -> daemons.Files:
        """The files of VRF ``name``'s ``daemon`` on this node."""
        return daemons.files(self.naming.run_dir(name), daemon)

    async def _pid(self, name: str, f: daemons.Files) -> int | None:
        child = self._children.get(name)
        if child is not None and child.poll() is not None:
            code = child.returncode
            self._children.pop(name, None)
            self._exit[name] = (
                f"exited with status {code}" if code >= 0 else f"killed by signal {-code}"
            )
        return await asyncio.to_thread(find_pid, f)

    async def ensure(self, name: str, wanted: daemons.Wanted | None) -> Report:
        """One level-based step for VRF ``name``'s daemon towards ``wanted``."""
        if wanted is None:
            await self.stop(name)
            return Report(None, None)
        kind = wanted.daemon
        if kind not in self.versions:
            self.versions[kind] = await asyncio.to_thread(version, kind)
            user_name = self.user_names.get(kind)
            if user_name is not None:
                self.users[kind] = await asyncio.to_thread(account, user_name)
        user = self.users.get(kind)
        f = self.files(name, kind)
        for other in daemons.USERS:
            if (
                other != kind
                and await asyncio.to_thread(find_pid, self.files(name, other)) is not None
            ):
                logger.info("VRF %s: routing.daemon is now %s; stopping %s", name, kind, other)
                await self.stop(name)
        pid = await self._pid(name, f)
        now = self.clock()
        if pid is None and name in self._running:
            del self._running[name]
            failures = self._failures.get(name, 0) + 1
            self._failures[name] = failures
            self._retry_at[name] = now + daemons.restart_delay(failures)
            await self._note_oom(name)
            logger.warning("VRF %s: %s %s", name, wanted.daemon, self._exit.get(name, "died"))
        elif pid is not None:
            since = self._running.setdefault(name, now)
            if now - since >= daemons.STABLE_SECONDS:
                self._failures.pop(name, None)
        applied = await asyncio.to_thread(processes.read, f.config)
        driver = DRIVERS[kind]
        observed = daemons.Observed(
            wanted=wanted,
            pid=pid,
            applied=applied,
            regroup=driver.processes_for(wanted.config) != driver.processes_for(applied or ""),
            failures=self._failures.get(name, 0),
            retry_at=self._retry_at.get(name, 0.0),
            now=now,
        )
        if daemons.needs_validation(observed):
            key = (name, wanted.config)
            if key not in self._refusals:
                self._refusals = {k: v for k, v in self._refusals.items() if k[0] != name}
                self._refusals[key] = await asyncio.to_thread(validate, f, wanted.config, user)
                if self._refusals[key] is not None:  # logged once per refused config
                    logger.warning("VRF %s: %s", name, self._refusals[key])
            refusal = self._refusals[key]
            observed = dataclasses.replace(observed, refusal=refusal)
        action = daemons.decide(observed)
        problem: daemons.Problem | None = None
        if action.kind == "restart" and action.config is not None:
            logger.info("VRF %s: %s needs other processes; restarting it", name, kind)
            self._unwatch(name)
            await asyncio.to_thread(terminate, pid, f, self._children.pop(name, None))
            self._running.pop(name, None)
            self._refusals.pop((name, action.config), None)
        if action.kind in ("start", "restart") and action.config is not None:
            pid = await self._start(name, f, action.config, user)
            if pid is None:
                failures = self._failures.get(name, 0) + 1
                self._failures[name] = failures
                self._retry_at[name] = now + daemons.restart_delay(failures)
                self._schedule(name, self._retry_at[name] - now)
        elif action.kind == "reload" and action.config is not None:
            error = await asyncio.to_thread(reload, f, action.config)
            if error is not None:
                logger.warning("VRF %s: %s", name, error)
                problem = daemons.Problem(Reason.DAEMON_FAILED, f"{error}.")
            else:
                logger.info("VRF %s: %s reloaded its config", name, wanted.daemon)
            self._refusals.pop((name, action.config), None)
        elif action.kind == "wait":
            self._schedule(name, observed.retry_at - now)
        if pid is not None:
            self._watch(name, pid)
        applied = await asyncio.to_thread(processes.read, f.config)
        after = dataclasses.replace(
            observed,
            pid=pid,
            applied=applied,
            failures=self._failures.get(name, 0),
            retry_at=self._retry_at.get(name, 0.0),
        )
        if problem is None:
            problem = daemons.problem(
                after,
                running=pid is not None,
                exit_text=self._exit.get(name),
                out_of_memory=name in self._oom,
            )
        state: vrfrouting.DaemonState
        if pid is not None:
            state = "Running"
        elif name in self._retry_at:
            state = "Restarting"
        else:
            state = "Stopped"
        status: specs.DaemonStatus = {
            "name": wanted.daemon,
            "version": self.versions.get(kind),
            "state": state,
            "pid": pid,
            "restarts": self._failures.get(name, 0),
            "configHash": daemons.config_hash(applied) if applied is not None and pid else None,
        }
        if pid is not None:
            summary = await asyncio.to_thread(read_sessions, f, applied or "")
            if summary is not None:
                status["sessions"] = [s.wire() for s in summary.sessions[: vrfrouting.MAX_SESSIONS]]
                status["sessionsUp"] = summary.up
                status["sessionsTotal"] = len(summary.sessions)
                status["routesLearned"] = summary.learned
                status["routes"] = summary.routes
        return Report(status, problem)

    async def _start(
        self, name: str, f: daemons.Files, config: str, user: Account | None
    ) -> int | None:
        await asyncio.to_thread(prepare_start, f, config, user)
        argv = DRIVERS[f.daemon].argv(f, user=user.name if user else None, config=config)
        self._oom_base[name] = await asyncio.to_thread(self.realizer.oom_kills, name)
        try:
            process = await self.realizer.launch(name, argv, cwd=f.run_dir, log=f.log)
        except OSError as error:
            self._exit[name] = f"could not start: {error}"
            return None
        if not await asyncio.to_thread(wait_started, f, process):
            if process.poll() is None:
                process.kill()
            await asyncio.to_thread(process.wait)
            said = await asyncio.to_thread(processes.tail, f.log)
            self._exit[name] = f"exited at start: {said}" if said else "exited at start"
            await self._note_oom(name)
            logger.warning("VRF %s: %s %s", name, f.daemon, self._exit[name])
            return None
        self._children[name] = process
        self._running[name] = self.clock()
        self._exit.pop(name, None)
        logger.info("VRF %s: %s started, pid %d", name, f.daemon, process.pid)
        return process.pid

    async def _note_oom(self, name: str) -> None:
        """A death with new OOM kills in the VRF's cgroup is its memory limit's doing."""
        kills = await asyncio.to_thread(self.realizer.oom_kills, name)
        if kills > self._oom_base.get(name, kills):
            self._oom.add(name)
            self._oom_base[name] = kills
        else:
            self._oom.discard(name)

    def _schedule(self, name: str, delay: float) -> None:
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[name] = loop.call_later(max(0.0, delay), self.on_change)

    def _watch(self, name: str, pid: int) -> None:
        """Wake the VRF loop the moment ``pid`` exits (a pidfd, also for an adopted
        daemon that is not our child)."""
        if self._watches.get(name, (0, 0))[0] == pid:
            return
        self._unwatch(name)
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            self.on_change()  # gone already
            return
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, self._exited, name)
        self._watches[name] = (pid, fd)

    def _exited(self, name: str) -> None:
        self._unwatch(name)
        self.on_change()

    def _unwatch(self, name: str) -> None:
        watch = self._watches.pop(name, None)
        if watch is not None:
            asyncio.get_running_loop().remove_reader(watch[1])
            os.close(watch[1])

    async def stop(self, name: str) -> None:
        """Stop VRF ``name``'s daemon (if any) and remove its run directory."""
        self._unwatch(name)
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        child = self._children.pop(name, None)
        reaped = False
        for kind in daemons.USERS:  # whichever daemon it runs (or ran before a change)
            f = self.files(name, kind)
            pid = await asyncio.to_thread(find_pid, f)
            if pid is not None:
                mine = child if child is not None and child.pid == pid else None
                reaped = reaped or mine is not None
                logger.info("VRF %s: stopping its %s, pid %d", name, kind, pid)
                await asyncio.to_thread(terminate, pid, f, mine)
        f = self.files(name)
        if child is not None and not reaped:
            alive = child.poll() is None
            await asyncio.to_thread(terminate, child.pid if alive else None, f, child)
        for kind, driver in DRIVERS.items():  # an FRR group whose script is gone
            for left in await asyncio.to_thread(driver.leftovers, self.files(name, kind)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(left, signal.SIGKILL)
        await asyncio.to_thread(shutil.rmtree, f.run_dir, True)
        self._running.pop(name, None)
        self._failures.pop(name, None)
        self._retry_at.pop(name, None)
        self._exit.pop(name, None)
        self._refusals = {k: v for k, v in self._refusals.items() if k[0] != name}

    async def sweep(self, keep: set[str]) -> None:
        """Stop daemons and remove run directories of VRFs not in ``keep`` (left by VRFs
        deleted while the agent was down)."""
        root = Path(self.naming.run_root)
        prefix = self.naming.netns_prefix
        entries = await asyncio.to_thread(
            lambda: sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        )
        for entry in entries:
            if entry.startswith(prefix) and entry[len(prefix) :] not in keep:
                await self.stop(entry[len(prefix) :])

    def close(self) -> None:
        """Forget the watches and timers; the daemons keep running (an agent restart
        adopts them)."""
        for name in list(self._watches):
            self._unwatch(name)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
