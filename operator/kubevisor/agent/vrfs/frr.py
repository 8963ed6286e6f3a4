"""FRR as one VRF's routing daemon: its process group, its parser, its reload, its sessions.

One of the two daemon modules (`bird` is the other) behind the shared decisions of
`kubevisor.agent.vrfs.daemons`; `supervising.Supervisor` calls them through
`supervising.Driver`.

FRR is several processes (zebra, staticd, and bgpd/ospfd as the config needs,
`processes_for`); the agent starts them as one group (`GROUP`, a short bash script in the
VRF's context: it starts each daemon with its sockets and pid file in the run directory,
loads the config with ``vtysh -f``, writes ``frr.pid`` and, when any one of them dies,
stops the others and exits). So one pid stands for the daemon, as BIRD's does, and FRR's
own supervisor (watchfrr, which restarts daemons behind the agent and keeps its state
under /run/frr and /etc/frr) is not used: the agent's backoff is the one restart policy.
A config that needs another set of daemons (``router ospf`` added, say) restarts the
group (`daemons.decide`), as no reload can start a daemon.

zebra runs in the VRF's network namespace without ``--vrfwnetns`` or a ``vrf`` block: the
VRF is FRR's default VRF, and zebra installs what bgpd and ospfd learn into the
namespace's main table, which on the netns backend is the VRF's table (docs/vrf.md,
"Where learned routes land").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from kubevisor.agent.vrfs import daemons, processes, sessions

NAME: daemons.Daemon = "frr"
#: FRR's programs (Debian's frr and frr-pythontools).
LIBEXEC = "/usr/lib/frr"
VTYSH = "vtysh"
RELOAD = f"{LIBEXEC}/frr-reload.py"
#: The control socket of a group: zebra's vty (the first daemon to start).
SOCKET = daemons.SOCKETS[NAME]
#: argv[3] of a group's bash, so the agent knows its own group in /proc.
TAG = "kubevisor-frr"
#: The account FRR's daemons drop to (they start as root in the VRF's namespace).
USER = daemons.USERS[NAME]
#: How a failed reload is named in the condition.
RELOAD_TOOL = "frr-reload"
#: One group: ``bash -c GROUP kubevisor-frr <run dir> <user or ""> <daemon>...``.
GROUP = r"""set -u
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
""".replace("$FRR_LIBEXEC", LIBEXEC)


def processes_for(config: str) -> tuple[str, ...]:
    """The FRR daemons a config needs, in start order: zebra (the RIB), staticd (``ip
    route``), bgpd for ``router bgp``, ospfd for ``router ospf``."""
    out = ["zebra", "staticd"]
    if re.search(r"^\s*router bgp\b", config, re.MULTILINE):
        out.append("bgpd")
    if re.search(r"^\s*router ospf\b", config, re.MULTILINE):
        out.append("ospfd")
    return tuple(out)


def argv(f: daemons.Files, *, user: str | None = None, config: str = "") -> list[str]:
    """The group script over the daemons ``config`` needs, dropping to ``user``."""
    return ["bash", "-c", GROUP, TAG, str(f.run_dir), user or "", *processes_for(config)]


def validate_argv(path: Path, *, user: str | None = None) -> list[str]:
    """``vtysh --dryrun -f``: vtysh knows every daemon's commands and reads nothing else
    (so it runs as the agent; ``user`` is not needed)."""
    del user
    return [VTYSH, "--dryrun", "-f", str(path)]


def reload_argv(path: Path) -> list[str]:
    """``frr-reload --reload``: applies the difference between the running config and
    ``path`` through the group's vty sockets (run with ``cwd`` = the run directory, the
    directory ``path`` is in)."""
    run_dir = str(path.parent)
    return [RELOAD, "--reload", "--stdout", "--vty_socket", run_dir,
            "--rundir", run_dir, "--confdir", run_dir, str(path)]  # fmt: skip


def reloaded(output: str, returncode: int) -> bool:
    """Whether frr-reload says the reload took: it exits 0."""
    del output
    return returncode == 0


def is_ours(cmdline: list[str], f: daemons.Files) -> bool:
    """Whether a process's argv is this VRF's group script (over our run directory)."""
    return (
        bool(cmdline)
        and Path(cmdline[0]).name == "bash"
        and len(cmdline) > 4
        and cmdline[3] == TAG
        and cmdline[4] == str(f.run_dir)
    )


def is_group_member(cmdline: list[str], f: daemons.Files) -> bool:
    """Whether a process is one of a group's daemons over this run directory (its
    ``--vty_socket``), left behind when its group script was killed."""
    return (
        bool(cmdline)
        and Path(cmdline[0]).parent == Path(LIBEXEC)
        and "--vty_socket" in cmdline
        and str(f.run_dir) in cmdline
    )


def parse_version(text: str) -> str | None:
    """``zebra --version`` prints ``zebra version 8.4.4``; the version, or None."""
    match = re.search(r"zebra version (\S+)", text)
    return match.group(1) if match else None


def refusal_message(parser_output: str, candidate: Path) -> str:
    """``vtysh --dryrun``'s message as a sentence about ``routing.config`` (its path
    replaced by the field name, its ``% ...[column]:`` markers dropped)."""
    text = daemons.parser_lines(parser_output, candidate)
    text = re.sub(r"% (.*?)\[\d+\]:\s+", r"\1: ", text)
    return daemons.refusal("FRR", text or "vtysh --dryrun refused the config without saying why")


def installed() -> bool:
    """Whether zebra, staticd, bgpd, ospfd, frr-reload, vtysh and bash are there
    (blocking)."""
    programs = [Path(LIBEXEC) / d for d in ("zebra", "staticd", "bgpd", "ospfd")]
    return bool(
        all(os.access(p, os.X_OK) for p in [*programs, Path(RELOAD)])
        and shutil.which(VTYSH)
        and shutil.which("bash")
    )


def version() -> str | None:
    """``zebra --version``; None when zebra is missing (blocking)."""
    try:
        done = subprocess.run(
            [f"{LIBEXEC}/zebra", "--version"],
            capture_output=True,
            text=True,
            timeout=processes.TOOL_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_version(done.stdout + done.stderr)


def prepare(f: daemons.Files) -> None:
    """vtysh and frr-reload look for ``vtysh.conf`` in ``--confdir``: an empty one."""
    (f.run_dir / "vtysh.conf").touch()


def leftovers(f: daemons.Files) -> list[int]:
    """This run directory's FRR daemons still alive (their group script was killed)."""
    if not f.run_dir.is_dir():
        return []
    out = []
    for pid_file in f.run_dir.glob("*.pid"):
        pid = processes.pid_in(pid_file)
        if pid is not None and is_group_member(processes.cmdline(pid), f):
            if not processes.zombie(pid):
                out.append(pid)
    return out


def _ask(f: daemons.Files, *command: str) -> str | None:
    argv = [VTYSH, "--vty_socket", str(f.run_dir), "-c", " ".join(command)]
    return processes.ask(argv, f.run_dir)


def read_sessions(f: daemons.Files, config: str = "") -> sessions.Summary | None:
    """The group's BGP sessions and OSPF adjacencies and its routes, asked over vtysh
    (only about the daemons ``config`` runs; None when zebra does not answer;
    blocking)."""
    running = processes_for(config)
    routes = _ask(f, "show", "ip", "route", "summary", "json")
    if routes is None:
        return None
    found: list[sessions.Session] = []
    if "bgpd" in running:
        found += sessions.frr_bgp(_ask(f, "show", "bgp", "summary", "json") or "")
    if "ospfd" in running:
        neighbors = _ask(f, "show", "ip", "ospf", "neighbor", "json") or ""
        found += sessions.frr_ospf(neighbors, routes)
    return sessions.summarize(found, sessions.frr_route_count(routes))
