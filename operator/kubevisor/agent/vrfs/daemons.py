"""A VRF's routing daemon as plain data: its files and what to do next (pure).

Shared by both daemons: BIRD 2 (``bird``, `kubevisor.agent.vrfs.bird`) and FRR (``frr``,
`kubevisor.agent.vrfs.frr`), each a module of its own with its argv, parser, reload and
show commands. The adapter (`kubevisor.agent.vrfs.supervising`) gathers the facts into
`Observed`, asks `decide` for an `Action`, and acts through the VRF's daemon module:
validate the config with the daemon's own parser, start it through `VRFRealizer.launch`
(the VRF's namespace and cgroup), reload it, restart it after a capped backoff, or stop it
and remove its run directory.

Files live in the VRF's run directory (`vrfnaming.Naming.run_dir`, named like the VRF's
namespace), named after the daemon: ``<daemon>.conf`` is the config the daemon runs
(written only after the daemon's parser accepted it), ``<daemon>.conf.new`` a candidate
being validated or loaded, ``<daemon>.pid`` the pid file and ``<daemon>.log`` its output.
The daemon runs with that directory as its working directory and is given sockets by
relative name where it can: a Unix socket path has at most 107 bytes and a run directory
of a long VRF name can be longer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kubevisor.agent.runtime import backoff
from kubevisor.agent.vrfs import planning, routingconfig
from kubevisor.api import vrfrouting, vrfs
from kubevisor.api.conditions import Reason

Daemon = Literal["bird", "frr"]
#: Each daemon's control socket in the run directory: BIRD's ``bird.ctl``; an FRR group's
#: zebra vty (the first of its daemons to start).
SOCKETS: dict[Daemon, str] = {"bird": "bird.ctl", "frr": "zebra.vty"}
#: The account each daemon runs as (Debian's packages create them; without it on the
#: node the daemon runs as root).
USERS: dict[Daemon, str] = {"bird": "bird", "frr": "frr"}
#: Restart backoff after the daemon died: 1 s doubling to 60 s (`runtime.backoff.delay`).
RESTART_FIRST = 1.0
RESTART_CAP = 60.0
#: A daemon that ran this long without dying starts its failure count afresh.
STABLE_SECONDS = 60.0

#: States reported in ``status.nodes.<node>.daemon.state`` (`vrfrouting.DaemonState`).
State = vrfrouting.DaemonState


@dataclass(frozen=True)
class Files:
    """Where one VRF's daemon keeps its files (all under ``run_dir``)."""

    run_dir: Path
    daemon: Daemon = "bird"

    @property
    def config(self) -> Path:
        return self.run_dir / f"{self.daemon}.conf"

    @property
    def candidate(self) -> Path:
        return self.run_dir / f"{self.daemon}.conf.new"

    @property
    def socket(self) -> Path:
        return self.run_dir / SOCKETS[self.daemon]

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.daemon}.pid"

    @property
    def log(self) -> Path:
        return self.run_dir / f"{self.daemon}.log"


def files(run_dir: str | Path, daemon: Daemon = "bird") -> Files:
    """The daemon's files in the VRF's run directory (``Naming.run_dir``)."""
    return Files(Path(run_dir), daemon)


def config_hash(text: str) -> str:
    """Short digest of a config text, reported as ``configHash`` (which config runs)."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def parser_lines(parser_output: str, candidate: Path) -> str:
    """A parser's output as one line about ``routing.config`` (the candidate's path
    replaced by the field name); empty when it said nothing."""
    lines = [line.strip() for line in parser_output.strip().splitlines() if line.strip()]
    return "; ".join(lines).replace(str(candidate), "routing.config")


def refusal(who: str, text: str) -> str:
    """The condition message of a refused ``routing.config``: ``who`` (BIRD, FRR) and
    what its parser said."""
    return f"{who} refused routing.config: {text} (a running daemon keeps its previous config)."


@dataclass(frozen=True)
class Wanted:
    """The daemon a VRF asks for on this node."""

    daemon: Daemon
    config: str


def wanted(spec: vrfs.VRFSpec, table: int = 0, vrf: str | None = None) -> Wanted | None:
    """The daemon of a VRF spec whose table is ``table``, or None for ``routing.daemon:
    none`` (or no routing); its config is ``routing.config`` or the typed spec's
    (`routingconfig.config`), bound to the l3mdev device ``vrf`` when given."""
    if spec.routing is None or spec.routing.daemon == "none":
        return None
    daemon: Daemon = "frr" if spec.routing.daemon == "frr" else "bird"
    return Wanted(daemon, routingconfig.config(spec.routing, table, vrf))


@dataclass(frozen=True)
class Observed:
    """What the adapter found for one VRF's daemon, at time ``now`` (monotonic seconds).

    ``applied`` is the config the daemon runs (``bird.conf``), ``refusal`` BIRD's message
    when the wanted config differs from it and failed ``bird -p`` (None: valid, or not
    checked because it is the applied one). ``failures`` counts deaths in a row and
    ``retry_at`` is when the next start may happen. ``regroup``: the wanted config needs
    another set of processes than the applied one (an FRR daemon added or dropped,
    `frr.processes_for`), which no reload can give.
    """

    wanted: Wanted | None
    pid: int | None
    applied: str | None
    refusal: str | None = None
    has_files: bool = False
    failures: int = 0
    retry_at: float = 0.0
    now: float = 0.0
    regroup: bool = False


Kind = Literal["none", "start", "reload", "restart", "stop", "wait"]


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
    - running with another config: reload (never restart) with the wanted one; only an
      FRR config that needs another set of daemons (``router ospf`` added, say) restarts
      the group, as no reload can start a daemon.
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
        if o.regroup:
            return Action("restart", o.wanted.config)
        return Action("reload", o.wanted.config)
    return Action("none")


def restart_delay(failures: int) -> float:
    """Seconds before the ``failures``-th restart in a row (1 s doubling to 60 s)."""
    return backoff.delay(failures, first=RESTART_FIRST, cap=RESTART_CAP)


Problem = planning.Problem


def problem(
    o: Observed, *, running: bool, exit_text: str | None = None, out_of_memory: bool = False
) -> Problem | None:
    """The node entry's reason after a pass: a refused config first (its message is the
    one the user must act on), then a daemon that is not running: DaemonOutOfMemory when
    the VRF's cgroup killed it (``out_of_memory``), else DaemonFailed."""
    if o.wanted is None:
        return None
    if o.refusal is not None:
        return Problem(Reason.INVALID_DAEMON_CONFIG, o.refusal)
    if not running:
        why = f" ({exit_text})" if exit_text else ""
        wait = max(0.0, o.retry_at - o.now)
        if out_of_memory:
            return Problem(
                Reason.DAEMON_OUT_OF_MEMORY,
                f"{o.wanted.daemon} was killed by the kernel for going over the VRF's memory"
                f" limit (resources.memory){why}; restart {o.failures + 1} in {wait:.0f} s.",
            )
        return Problem(
            Reason.DAEMON_FAILED,
            f"{o.wanted.daemon} is not running{why}; restart {o.failures + 1} in {wait:.0f} s.",
        )
    return None
