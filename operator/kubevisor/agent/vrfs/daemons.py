"""A VRF's routing daemon as plain data: its files, its argv, and what to do next (pure).

The adapter (`kubevisor.agent.vrfs.supervising`) gathers the facts into `Observed`, asks
`decide` for an `Action`, and acts: validate the config with the daemon's own parser, start
it through `VRFRealizer.launch` (the VRF's namespace and cgroup), reload it, restart it
after a capped backoff, or stop it and remove its run directory. Only BIRD 2 is run so far.

Files live in the VRF's run directory (`vrfnaming.Naming.run_dir`, named like the VRF's
namespace): ``bird.conf`` is the config the daemon runs (written only after ``bird -p``
accepted it), ``bird.conf.new`` a candidate being validated or loaded, ``bird.ctl`` the
control socket and ``bird.pid`` the pid file. The daemon runs with that directory as its
working directory and is given the socket by its relative name: a Unix socket path has at
most 107 bytes and a run directory of a long VRF name can be longer.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kubevisor.agent.runtime import backoff
from kubevisor.agent.vrfs import planning
from kubevisor.api import vrfs
from kubevisor.api.conditions import Reason

BIRD = "bird"
BIRDC = "birdc"
CONFIG = "bird.conf"
CANDIDATE = "bird.conf.new"
SOCKET = "bird.ctl"
PID_FILE = "bird.pid"
LOG = "bird.log"
#: Restart backoff after the daemon died: 1 s doubling to 60 s (`runtime.backoff.delay`).
RESTART_FIRST = 1.0
RESTART_CAP = 60.0
#: A daemon that ran this long without dying starts its failure count afresh.
STABLE_SECONDS = 60.0

#: States reported in ``status.nodes.<node>.daemon.state`` (`vrfs.DaemonState`).
State = vrfs.DaemonState


@dataclass(frozen=True)
class Files:
    """Where one VRF's daemon keeps its files (all under ``run_dir``)."""

    run_dir: Path

    @property
    def config(self) -> Path:
        return self.run_dir / CONFIG

    @property
    def candidate(self) -> Path:
        return self.run_dir / CANDIDATE

    @property
    def socket(self) -> Path:
        return self.run_dir / SOCKET

    @property
    def pid_file(self) -> Path:
        return self.run_dir / PID_FILE

    @property
    def log(self) -> Path:
        return self.run_dir / LOG


def files(run_dir: str | Path) -> Files:
    """The daemon's files in the VRF's run directory (``Naming.run_dir``)."""
    return Files(Path(run_dir))


#: The account BIRD drops to (Debian's bird2 creates it); it keeps only the network
#: capabilities, so a config cannot read or write the node's files as root (``include``,
#: ``log "<file>"``). Without that account the daemon runs as root.
USER = "bird"


def _as(user: str | None) -> list[str]:
    return ["-u", user, "-g", user] if user is not None else []


def argv(f: Files, *, user: str | None = None) -> list[str]:
    """BIRD in the foreground (the agent supervises it), with our config, socket and pid
    file, as ``user`` when given; run with ``cwd=f.run_dir`` (the socket is named
    relative to it)."""
    return [BIRD, "-f", *_as(user), "-c", str(f.config), "-s", SOCKET, "-P", str(f.pid_file)]


def validate_argv(path: Path, *, user: str | None = None) -> list[str]:
    """BIRD's own parser over a config file (``bird -p``: parse and exit), as ``user``
    (so an ``include`` reads only what that account may)."""
    return [BIRD, "-p", *_as(user), "-c", str(path)]


def reload_argv(path: Path) -> list[str]:
    """Ask the running daemon to load ``path`` (run with ``cwd`` = the run directory)."""
    return [BIRDC, "-s", SOCKET, "configure", f'"{path}"']


def is_our_daemon(cmdline: list[str], f: Files) -> bool:
    """Whether a process's argv (``/proc/PID/cmdline``) is this VRF's daemon: BIRD with our
    config file (so a reused pid is never mistaken for it)."""
    return (
        bool(cmdline)
        and Path(cmdline[0]).name == BIRD
        and "-c" in cmdline
        and str(f.config) in cmdline
    )


def parse_version(text: str) -> str | None:
    """``bird --version`` prints ``BIRD version 2.0.12``; the version, or None."""
    match = re.search(r"BIRD version (\S+)", text)
    return match.group(1) if match else None


def config_hash(text: str) -> str:
    """Short digest of a config text, reported as ``configHash`` (which config runs)."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def refusal_message(parser_output: str, candidate: Path) -> str:
    """BIRD's parser message as a sentence about ``routing.config``: its path replaced by
    the field name, its program prefix dropped."""
    lines = [line.strip() for line in parser_output.strip().splitlines() if line.strip()]
    text = "; ".join(lines) or "bird -p refused the config without saying why"
    text = text.replace(str(candidate), "routing.config")
    text = re.sub(r"^bird: ", "", text)
    return f"BIRD refused routing.config: {text} (a running daemon keeps its previous config)."


@dataclass(frozen=True)
class Wanted:
    """The daemon a VRF asks for on this node."""

    daemon: vrfs.RoutingDaemon
    config: str


def wanted(spec: vrfs.VRFSpec) -> Wanted | None:
    """The daemon of a VRF spec, or None for ``routing.daemon: none`` (or no routing)."""
    if spec.routing is None or spec.routing.daemon == "none":
        return None
    return Wanted(spec.routing.daemon, spec.routing.config or "")


@dataclass(frozen=True)
class Observed:
    """What the adapter found for one VRF's daemon, at time ``now`` (monotonic seconds).

    ``applied`` is the config the daemon runs (``bird.conf``), ``refusal`` BIRD's message
    when the wanted config differs from it and failed ``bird -p`` (None: valid, or not
    checked because it is the applied one). ``failures`` counts deaths in a row and
    ``retry_at`` is when the next start may happen.
    """

    wanted: Wanted | None
    pid: int | None
    applied: str | None
    refusal: str | None = None
    has_files: bool = False
    failures: int = 0
    retry_at: float = 0.0
    now: float = 0.0


Kind = Literal["none", "start", "reload", "stop", "wait"]


@dataclass(frozen=True)
class Action:
    """What to do: ``config`` is the text to start or reload with (start/reload)."""

    kind: Kind
    config: str | None = None


def needs_validation(o: Observed) -> bool:
    """Whether the wanted config must pass ``bird -p`` first: it is not the one applied."""
    return o.wanted is not None and o.wanted.config != o.applied


def decide(o: Observed) -> Action:
    """The next step for one VRF's daemon (level-based: the same facts, the same step).

    - no daemon wanted: stop it and remove its files, if any are left;
    - the wanted config was refused: keep what runs; a dead daemon with an applied config
      comes back with that config (after its backoff); without one, nothing starts;
    - not running: start (after the backoff of its previous deaths) with the wanted
      config, or the applied one when the wanted one was refused;
    - running with another config: reload (never restart) with the wanted one.
    """
    if o.wanted is None:
        return Action("stop") if o.pid is not None or o.has_files else Action("none")
    valid = o.refusal is None
    config = o.wanted.config if valid else o.applied
    if o.pid is None:
        if config is None:
            return Action("none")
        if o.now < o.retry_at:
            return Action("wait")
        return Action("start", config)
    if valid and o.wanted.config != o.applied:
        return Action("reload", o.wanted.config)
    return Action("none")


def restart_delay(failures: int) -> float:
    """Seconds before the ``failures``-th restart in a row (1 s doubling to 60 s)."""
    return backoff.delay(failures, first=RESTART_FIRST, cap=RESTART_CAP)


Problem = planning.Problem


def problem(o: Observed, *, running: bool, exit_text: str | None = None) -> Problem | None:
    """The node entry's reason after a pass: a refused config first (its message is the
    one the user must act on), then a daemon that is not running."""
    if o.wanted is None:
        return None
    if o.refusal is not None:
        return Problem(Reason.INVALID_DAEMON_CONFIG, o.refusal)
    if not running:
        why = f" ({exit_text})" if exit_text else ""
        wait = max(0.0, o.retry_at - o.now)
        return Problem(
            Reason.DAEMON_FAILED,
            f"{o.wanted.daemon} is not running{why}; restart {o.failures + 1} in {wait:.0f} s.",
        )
    return None
