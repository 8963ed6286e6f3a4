"""The routing daemon's files, argv and next step: pure, table-tested."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubevisor.agent.kernel import cgroups, vrfnaming
from kubevisor.agent.vrfs import bird, daemons, frr
from kubevisor.api import vrfs

pytestmark = pytest.mark.unit

NAMING = vrfnaming.Naming("kvt-a", "kvt-a-vrf-", "kubevisor-kvt-a", run_root="/run/kv")
F = daemons.files(NAMING.run_dir("ns.red"))
RED = daemons.Wanted("bird", "router id 10.0.0.1;\n")
NEW = daemons.Wanted("bird", "router id 10.0.0.2;\n")


def test_files_sit_in_the_run_dir_named_like_the_namespace() -> None:
    assert NAMING.run_dir("ns.red") == "/run/kv/kvt-a-vrf-ns.red"
    assert F.config == Path("/run/kv/kvt-a-vrf-ns.red/bird.conf")
    assert F.candidate == Path("/run/kv/kvt-a-vrf-ns.red/bird.conf.new")
    assert F.socket == Path("/run/kv/kvt-a-vrf-ns.red/bird.ctl")
    assert F.pid_file == Path("/run/kv/kvt-a-vrf-ns.red/bird.pid")
    assert {p.parent for p in (F.config, F.candidate, F.socket, F.pid_file, F.log)} == {F.run_dir}


def test_argv() -> None:
    assert bird.argv(F) == [
        "bird",
        "-f",
        "-c",
        "/run/kv/kvt-a-vrf-ns.red/bird.conf",
        "-s",
        "bird.ctl",
        "-P",
        "/run/kv/kvt-a-vrf-ns.red/bird.pid",
    ]
    assert bird.validate_argv(F.candidate) == ["bird", "-p", "-c", str(F.candidate)]
    assert bird.argv(F, user="bird")[:6] == ["bird", "-f", "-u", "bird", "-g", "bird"]
    assert bird.validate_argv(F.candidate, user="bird") == [
        "bird", "-p", "-u", "bird", "-g", "bird", "-c", str(F.candidate)
    ]  # fmt: skip
    assert bird.reload_argv(F.candidate) == [
        "birdc",
        "-s",
        "bird.ctl",
        "configure",
        f'"{F.candidate}"',
    ]


@pytest.mark.parametrize(
    ("cmdline", "ours"),
    [
        (bird.argv(F), True),
        (["/usr/sbin/bird", *bird.argv(F)[1:]], True),
        (bird.argv(F, user="bird"), True),
        (["bird", "-f", "-c", "/etc/bird/bird.conf"], False),
        (["sleep", "600", str(F.config)], False),
        ([], False),
    ],
)
def test_is_our_daemon(cmdline: list[str], ours: bool) -> None:
    assert bird.is_ours(cmdline, F) is ours


@pytest.mark.parametrize(
    ("text", "version"),
    [("BIRD version 2.0.12", "2.0.12"), ("BIRD version 2.15.1\n", "2.15.1"), ("", None)],
)
def test_parse_version(text: str, version: str | None) -> None:
    assert bird.parse_version(text) == version


def test_refusal_message_names_the_field_not_the_file() -> None:
    out = f"bird: {F.candidate}:2:10 syntax error, unexpected CF_SYM_UNDEFINED\n"
    message = bird.refusal_message(out, F.candidate)
    assert message.startswith(
        "BIRD refused routing.config: routing.config:2:10 syntax error, unexpected"
    )
    assert str(F.run_dir) not in message
    assert "keeps its previous config" in message


@pytest.mark.parametrize(
    ("routing", "want"),
    [
        (None, None),
        ({"daemon": "none"}, None),
        ({"daemon": "bird", "config": "x"}, daemons.Wanted("bird", "x")),
        ({"daemon": "bird"}, daemons.Wanted("bird", "")),
    ],
)
def test_wanted(routing: dict[str, str] | None, want: daemons.Wanted | None) -> None:
    raw: dict[str, object] = {} if routing is None else {"routing": routing}
    assert daemons.wanted(vrfs.VRFSpec.model_validate(raw)) == want


Obs = daemons.Observed
A = daemons.Action
REFUSED = "BIRD refused routing.config: ..."


@pytest.mark.parametrize(
    ("observed", "action"),
    [
        # nothing wanted: stop what runs, clean what is left, else nothing
        (Obs(None, pid=None, applied=None), A("none")),
        (Obs(None, pid=42, applied=RED.config, has_files=True), A("stop")),
        (Obs(None, pid=None, applied=None, has_files=True), A("stop")),
        # first start, after validation
        (Obs(RED, pid=None, applied=None), A("start", RED.config)),
        # a refused first config starts nothing
        (Obs(RED, pid=None, applied=None, refusal=REFUSED), A("none")),
        # running with the wanted config: nothing to do
        (Obs(RED, pid=42, applied=RED.config), A("none")),
        # a config change reloads, never restarts
        (Obs(NEW, pid=42, applied=RED.config), A("reload", NEW.config)),
        # a refused change leaves the running daemon alone
        (Obs(NEW, pid=42, applied=RED.config, refusal=REFUSED), A("none")),
        # died: waits out its backoff, then comes back
        (Obs(RED, pid=None, applied=RED.config, failures=2, retry_at=10.0, now=9.0), A("wait")),
        (
            Obs(RED, pid=None, applied=RED.config, failures=2, retry_at=10.0, now=10.0),
            A("start", RED.config),
        ),
        # died with a refused change pending: back with the config it ran
        (Obs(NEW, pid=None, applied=RED.config, refusal=REFUSED), A("start", RED.config)),
        # died, then a valid change: starts with the new one
        (Obs(NEW, pid=None, applied=RED.config), A("start", NEW.config)),
    ],
)
def test_decide(observed: daemons.Observed, action: daemons.Action) -> None:
    assert daemons.decide(observed) == action


def test_needs_validation_only_for_a_config_not_applied() -> None:
    assert daemons.needs_validation(Obs(RED, pid=None, applied=None))
    assert daemons.needs_validation(Obs(NEW, pid=42, applied=RED.config))
    assert not daemons.needs_validation(Obs(RED, pid=42, applied=RED.config))
    assert not daemons.needs_validation(Obs(None, pid=42, applied=RED.config))


@pytest.mark.parametrize(
    ("failures", "delay"), [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (100, 60.0)]
)
def test_restart_backoff_is_capped(failures: int, delay: float) -> None:
    assert daemons.restart_delay(failures) == delay


@pytest.mark.parametrize(
    ("observed", "running", "reason"),
    [
        (Obs(None, pid=None, applied=None), False, None),
        (Obs(RED, pid=42, applied=RED.config), True, None),
        (Obs(NEW, pid=42, applied=RED.config, refusal=REFUSED), True, "InvalidDaemonConfig"),
        (
            Obs(RED, pid=None, applied=RED.config, failures=1, retry_at=3.0, now=2.0),
            False,
            "DaemonFailed",
        ),
    ],
)
def test_problem(observed: daemons.Observed, running: bool, reason: str | None) -> None:
    found = daemons.problem(observed, running=running)
    assert (found.reason if found else None) == reason
    if found is not None and reason == "InvalidDaemonConfig":
        assert found.message == REFUSED


@pytest.mark.parametrize(
    ("out_of_memory", "reason", "says"),
    [
        (True, "DaemonOutOfMemory", "bird was killed by the kernel for going over the VRF's"),
        (False, "DaemonFailed", "bird is not running (killed by signal 9)"),
    ],
)
def test_a_death_by_the_vrfs_memory_limit_says_so(
    out_of_memory: bool, reason: str, says: str
) -> None:
    """Issue 18: an OOM kill in the VRF's cgroup is the VRF's memory limit, not a crash;
    either way the sentence says when it comes back."""
    o = Obs(RED, pid=None, applied=RED.config, failures=1, retry_at=3.0, now=1.0)
    found = daemons.problem(
        o, running=False, exit_text="killed by signal 9", out_of_memory=out_of_memory
    )
    assert found is not None and found.reason == reason
    assert says in found.message and found.message.endswith("restart 2 in 2 s.")


@pytest.mark.parametrize(
    ("version", "path", "text", "kills"),
    [
        (
            "v1",
            "memory/kv/red/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
            3,
        ),
        ("v2", "kv/red/memory.events", "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\n", 2),
        ("v1", None, "", 0),  # the cgroup is gone
    ],
)
def test_oom_kills_read_from_the_cgroup(
    tmp_path: Path, version: str, path: str | None, text: str, kills: int
) -> None:
    if version == "v2":
        (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    else:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
        (tmp_path / "memory").mkdir()
    if path is not None:
        (tmp_path / path).parent.mkdir(parents=True)
        (tmp_path / path).write_text(text)
    context = cgroups.CgroupContext("red", parent="kv", root=tmp_path)
    assert context.version == version
    assert context.oom_kills() == kills


FRR = daemons.files(NAMING.run_dir("ns.blue"), "frr")
BGP = "router bgp 65001\n neighbor 10.0.0.2 remote-as 65002\nexit\n"
OSPF = "router ospf\n network 10.0.0.0/24 area 0\nexit\n"
FRR_RED = daemons.Wanted("frr", BGP)
FRR_NEW = daemons.Wanted("frr", BGP + "ip route 192.0.2.0/24 blackhole\n")
FRR_OSPF = daemons.Wanted("frr", BGP + OSPF)


def test_frr_files_and_argv() -> None:
    assert FRR.config == Path("/run/kv/kvt-a-vrf-ns.blue/frr.conf")
    assert FRR.candidate == Path("/run/kv/kvt-a-vrf-ns.blue/frr.conf.new")
    assert FRR.pid_file == Path("/run/kv/kvt-a-vrf-ns.blue/frr.pid")
    assert FRR.socket == Path("/run/kv/kvt-a-vrf-ns.blue/zebra.vty")
    argv = frr.argv(FRR, user="frr", config=BGP)
    assert argv[:2] == ["bash", "-c"] and argv[3:] == [
        "kubevisor-frr", str(FRR.run_dir), "frr", "zebra", "staticd", "bgpd"
    ]  # fmt: skip
    assert frr.validate_argv(FRR.candidate) == [
        "vtysh", "--dryrun", "-f", str(FRR.candidate)
    ]  # fmt: skip
    reload = frr.reload_argv(FRR.candidate)
    assert reload[0] == "/usr/lib/frr/frr-reload.py" and reload[-1] == str(FRR.candidate)
    assert reload[reload.index("--vty_socket") + 1] == str(FRR.run_dir)


@pytest.mark.parametrize(
    ("config", "needed"),
    [
        ("", ("zebra", "staticd")),
        ("ip route 192.0.2.0/24 blackhole\n", ("zebra", "staticd")),
        (BGP, ("zebra", "staticd", "bgpd")),
        (OSPF, ("zebra", "staticd", "ospfd")),
        (BGP + OSPF, ("zebra", "staticd", "bgpd", "ospfd")),
        ("! router bgp 1 (a comment)\nrouter ospf6\n", ("zebra", "staticd")),
    ],
)
def test_frr_daemons_the_config_needs(config: str, needed: tuple[str, ...]) -> None:
    assert frr.processes_for(config) == needed


@pytest.mark.parametrize(
    ("cmdline", "ours"),
    [
        (frr.argv(FRR, config=BGP), True),
        (["/bin/bash", *frr.argv(FRR, config=BGP)[1:]], True),
        (frr.argv(daemons.files(NAMING.run_dir("ns.red"), "frr")), False),
        (bird.argv(F), False),
        (["bash", "-c", "true"], False),
    ],
)
def test_is_our_frr_group(cmdline: list[str], ours: bool) -> None:
    assert frr.is_ours(cmdline, FRR) is ours


def test_frr_group_members_are_found_by_their_run_dir() -> None:
    member = ["/usr/lib/frr/bgpd", "-u", "frr", "--vty_socket", str(FRR.run_dir), "-P", "0"]
    assert frr.is_group_member(member, FRR)
    assert not frr.is_group_member(member, daemons.files(NAMING.run_dir("x"), "frr"))
    assert not frr.is_group_member(["/usr/sbin/bird", "-c", str(FRR.config)], FRR)


def test_frr_refusal_quotes_vtysh() -> None:
    said = "line 2: % Unknown command[25]:  neighbour x\n"
    assert frr.refusal_message(said, FRR.candidate) == (
        "FRR refused routing.config: line 2: Unknown command: neighbour x (a running daemon"
        " keeps its previous config)."
    )
    assert frr.parse_version("zebra version 8.4.4\n") == "8.4.4"


@pytest.mark.parametrize(
    ("observed", "action"),
    [
        (Obs(FRR_RED, pid=None, applied=None), A("start", BGP)),
        (Obs(FRR_NEW, pid=42, applied=BGP), A("reload", FRR_NEW.config)),
        # a config that needs another daemon restarts the group: no reload starts ospfd
        (Obs(FRR_OSPF, pid=42, applied=BGP, regroup=True), A("restart", FRR_OSPF.config)),
        (Obs(FRR_RED, pid=42, applied=FRR_OSPF.config, regroup=True), A("restart", BGP)),
        (Obs(FRR_OSPF, pid=42, applied=BGP, refusal=REFUSED, regroup=True), A("none")),
    ],
)
def test_decide_frr(observed: daemons.Observed, action: daemons.Action) -> None:
    assert daemons.decide(observed) == action
