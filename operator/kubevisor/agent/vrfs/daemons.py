"""A VRF's routing daemon as plain data: its files, its argv, and what to do next (pure).

The adapter (`kubevisor.agent.vrfs.supervising`) gathers the facts into `Observed`, asks
`decide` for an `Action`, and acts: validate the config with the daemon's own parser, start
it through `VRFRealizer.launch` (the VRF's namespace and cgroup), reload it, restart it
after a capped backoff, or stop it and remove its run directory. Two daemons are run, with
the same decisions: BIRD 2 (``bird``) and FRR (``frr``).

Files live in the VRF's run directory (`vrfnaming.Naming.run_dir`, named like the VRF's
namespace), named after the daemon: ``<daemon>.conf`` is the config the daemon runs
(written only after the daemon's parser accepted it), ``<daemon>.conf.new`` a candidate
being validated or loaded, ``<daemon>.pid`` the pid file and ``<daemon>.log`` its output.
BIRD's control socket is ``bird.ctl``; FRR's daemons each have a ``<name>.vty`` socket and
zebra's ``zserv.api`` there. The daemon runs with that directory as its working directory
and is given sockets by relative name where it can: a Unix socket path has at most 107
bytes and a run directory of a long VRF name can be longer.

FRR is several processes (zebra, staticd, and bgpd/ospfd as the config needs, `frr_daemons`);
the agent starts them as one group (`FRR_GROUP`, a short bash script in the VRF's context:
it starts each daemon with its sockets and pid file in the run directory, loads the config
with ``vtysh -f``, writes ``frr.pid`` and, when any one of them dies, stops the others and
exits). So one pid stands for the daemon, as BIRD's does, and FRR's own supervisor
(watchfrr, which restarts daemons behind the agent and keeps its state under /run/frr and
/etc/frr) is not used: the agent's backoff is the one restart policy.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kubevisor.agent.runtime import backoff
from kubevisor.agent.vrfs import planning, routingconfig
from kubevisor.api import vrfs
from kubevisor.api.conditions import Reason

Daemon = Literal["bird", "frr"]
BIRD = "bird"
BIRDC = "birdc"
CONFIG = "bird.conf"
CANDIDATE = "bird.conf.new"
SOCKET = "bird.ctl"
PID_FILE = "bird.pid"
LOG = "bird.log"
#: FRR's programs (Debian's frr and frr-pythontools).
FRR_LIBEXEC = "/usr/lib/frr"
VTYSH = "vtysh"
FRR_RELOAD = f"{FRR_LIBEXEC}/frr-reload.py"
#: The control socket of an FRR group: zebra's vty (the first daemon to start).
FRR_SOCKET = "zebra.vty"
#: argv[3] of an FRR group's bash, so the agent knows its own group in /proc.
FRR_TAG = "kubevisor-frr"
#: One FRR group: ``bash -c FRR_GROUP kubevisor-frr <run dir> <user or ""> <daemon>...``.
FRR_GROUP = r"""set -u
dir=$1; user=$2; shift 2
as=(); [ -n "$user" ] && as=(-u "$user" -g "$user")
pids=()
stop() { trap - TERM INT; kill "${pids[@]}" 2>/dev/null; wait; exit "$1"; }
trap 'stop 0' TERM INT
for d in "$@"; do
  "$FRR_LIBEXEC/$d" "${as[@]}" --vty_socket "$dir" \
    -z "$dir/zserv.api" -i "$dir/$d.pid" -P 0 --log stdout &
  pids+=($!)
  for _ in $(seq 200); do [ -S "$dir/$d.vty" ] && break; kill -0 $! 2>/dev/null || stop 1
    sleep 0.05; done
done
vtysh --vty_socket "$dir" -f "$dir/frr.conf" || stop 1
echo $$ > "$dir/frr.pid"
wait -n
stop 1
""".replace("$FRR_LIBEXEC", FRR_LIBEXEC)
#: Restart backoff after the daemon died: 1 s doubling to 60 s (`runtime.backoff.delay`).
RESTART_FIRST = 1.0
RESTART_CAP = 60.0
#: A daemon that ran this long without dying starts its failure count afresh.
STABLE_SECONDS = 60.0

#: States reported in ``status.nodes.<node>.daemon.state`` (`vrfs.DaemonState`).
State = vrfs.DaemonState


def frr_daemons(config: str) -> tuple[str, ...]:
    """The FRR daemons a config needs, in start order: zebra (the RIB), staticd (``ip
    route``), bgpd for ``router bgp``, ospfd for ``router ospf``."""
    out = ["zebra", "staticd"]
    if re.search(r"^\s*router bgp\b", config, re.MULTILINE):
        out.append("bgpd")
    if re.search(r"^\s*router ospf\b", config, re.MULTILINE):
        out.append("ospfd")
    return tuple(out)


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
        return self.run_dir / (SOCKET if self.daemon == "bird" else FRR_SOCKET)

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.daemon}.pid"

    @property
    def log(self) -> Path:
        return self.run_dir / f"{self.daemon}.log"


def files(run_dir: str | Path, daemon: Daemon = "bird") -> Files:
    """The daemon's files in the VRF's run directory (``Naming.run_dir``)."""
    return Files(Path(run_dir), daemon)


#: The account BIRD drops to (Debian's bird2 creates it); it keeps only the network
#: capabilities, so a config cannot read or write the node's files as root (``include``,
#: ``log "<file>"``). Without that account the daemon runs as root.
USER = "bird"
#: The account each daemon runs as (Debian's packages create them; FRR's daemons start
#: as root in the VRF's namespace and drop to it).
USERS: dict[Daemon, str] = {"bird": "bird", "frr": "frr"}


def _as(user: str | None) -> list[str]:
    return ["-u", user, "-g", user] if user is not None else []


def argv(f: Files, *, user: str | None = None, config: str = "") -> list[str]:
    """The daemon in the foreground (the agent supervises it), as ``user`` when given;
    run with ``cwd=f.run_dir``. BIRD: our config, socket and pid file. FRR: the group
    script over the daemons ``config`` needs (`frr_daemons`)."""
    if f.daemon == "frr":
        return ["bash", "-c", FRR_GROUP, FRR_TAG, str(f.run_dir), user or "",
                *frr_daemons(config)]  # fmt: skip
    return [BIRD, "-f", *_as(user), "-c", str(f.config), "-s", SOCKET, "-P", str(f.pid_file)]


def validate_argv(path: Path, *, user: str | None = None, daemon: Daemon = "bird") -> list[str]:
    """The daemon's own parser over a config file: ``bird -p`` (parse and exit) as
    ``user`` (so an ``include`` reads only what that account may); FRR: ``vtysh --dryrun
    -f`` (vtysh knows every daemon's commands; it reads nothing else)."""
    if daemon == "frr":
        return [VTYSH, "--dryrun", "-f", str(path)]
    return [BIRD, "-p", *_as(user), "-c", str(path)]


def reload_argv(path: Path, daemon: Daemon = "bird") -> list[str]:
    """Ask the running daemon to load ``path`` (run with ``cwd`` = the run directory, the
    directory ``path`` is in). FRR: ``frr-reload --reload`` applies the difference
    between the running config and ``path`` through the group's vty sockets."""
    if daemon == "frr":
        run_dir = str(path.parent)
        return [FRR_RELOAD, "--reload", "--stdout", "--vty_socket", run_dir,
                "--rundir", run_dir, "--confdir", run_dir, str(path)]  # fmt: skip
    return [BIRDC, "-s", SOCKET, "configure", f'"{path}"']


def reloaded(output: str, returncode: int, daemon: Daemon = "bird") -> bool:
    """Whether a reload's output says it took: birdc prints ``Reconfigured``;
    frr-reload exits 0."""
    if daemon == "frr":
        return returncode == 0
    return returncode == 0 and ("Reconfigured" in output or "Reconfiguration" in output)


def is_our_daemon(cmdline: list[str], f: Files) -> bool:
    """Whether a process's argv (``/proc/PID/cmdline``) is this VRF's daemon (so a reused
    pid is never mistaken for it): BIRD with our config file; FRR: our group script over
    our run directory."""
    if not cmdline:
        return False
    if f.daemon == "frr":
        return (
            Path(cmdline[0]).name == "bash"
            and len(cmdline) > 4
            and cmdline[3] == FRR_TAG
            and cmdline[4] == str(f.run_dir)
        )
    return Path(cmdline[0]).name == BIRD and "-c" in cmdline and str(f.config) in cmdline


def is_group_member(cmdline: list[str], f: Files) -> bool:
    """Whether a process is one of an FRR group's daemons over this run directory (its
    ``--vty_socket``), left behind when its group script was killed."""
    return (
        bool(cmdline)
        and Path(cmdline[0]).parent == Path(FRR_LIBEXEC)
        and "--vty_socket" in cmdline
        and str(f.run_dir) in cmdline
    )


def parse_version(text: str) -> str | None:
    """``bird --version`` prints ``BIRD version 2.0.12``, ``zebra --version`` ``zebra
    version 8.4.4``; the version, or None."""
    match = re.search(r"(?:BIRD|zebra) version (\S+)", text)
    return match.group(1) if match else None


def config_hash(text: str) -> str:
    """Short digest of a config text, reported as ``configHash`` (which config runs)."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def refusal_message(parser_output: str, candidate: Path, daemon: Daemon = "bird") -> str:
    """The parser's message as a sentence about ``routing.config``: its path replaced by
    the field name, its program prefix dropped (FRR's ``[column]`` markers too)."""
    lines = [line.strip() for line in parser_output.strip().splitlines() if line.strip()]
    who, tool = ("FRR", "vtysh --dryrun") if daemon == "frr" else ("BIRD", "bird -p")
    text = "; ".join(lines) or f"{tool} refused the config without saying why"
    text = text.replace(str(candidate), "routing.config")
    text = re.sub(r"^bird: ", "", text)
    text = re.sub(r"% (.*?)\[\d+\]:\s+", r"\1: ", text)
    return f"{who} refused routing.config: {text} (a running daemon keeps its previous config)."


@dataclass(frozen=True)
class Wanted:
    """The daemon a VRF asks for on this node."""

    daemon: Daemon
    config: str


def wanted(spec: vrfs.VRFSpec, table: int = 0) -> Wanted | None:
    """The daemon of a VRF spec whose table is ``table``, or None for ``routing.daemon:
    none`` (or no routing); its config is ``routing.config`` or the typed spec's
    (`routingconfig.config`)."""
    if spec.routing is None or spec.routing.daemon == "none":
        return None
    daemon: Daemon = "frr" if spec.routing.daemon == "frr" else "bird"
    return Wanted(daemon, routingconfig.config(spec.routing, table))


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
        if o.wanted.daemon == "frr" and frr_daemons(o.wanted.config) != frr_daemons(
            o.applied or ""
        ):
            return Action("restart", o.wanted.config)
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
