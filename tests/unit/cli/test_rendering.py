"""What the CLI prints: -o json|yaml|name, the human forms, vnc URLs, error sentences."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml

from kubevisor.cli import completing, main, rendering

pytestmark = pytest.mark.unit


def _vm(name: str = "web", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default", "managedFields": [{"manager": "x"}]},
        "spec": {"runStrategy": "Always"},
        "status": status,
    }


def test_json_of_one_object_drops_managed_fields() -> None:
    out = json.loads(rendering.render(_vm(), "json", human=rendering.describe))
    assert out["metadata"] == {"name": "web", "namespace": "default"}
    assert out["kind"] == "VirtualMachine"


def test_yaml_of_many_is_a_list_in_order() -> None:
    out = yaml.safe_load(rendering.render([_vm("b"), _vm("a")], "yaml", human=rendering.vm_table))
    assert out["kind"] == "List"
    assert [i["metadata"]["name"] for i in out["items"]] == ["b", "a"]
    assert all("managedFields" not in i["metadata"] for i in out["items"])


def test_name_output_is_kind_slash_name() -> None:
    text = rendering.render([_vm("a"), _vm("b")], "name", human=rendering.vm_table)
    assert text == "virtualmachine/a\nvirtualmachine/b"


def test_human_is_the_default() -> None:
    text = rendering.render([_vm("a", phase="Running", nodeName="n1")], rendering.HUMAN,
                            human=rendering.vm_table)  # fmt: skip
    header, line = text.splitlines()
    assert header.split() == rendering.HEADER
    assert line.split() == ["a", "Running", "-", "n1", "-", "Always"]
    assert rendering.vm_table([]) == "No VirtualMachines found."


def test_unknown_format_names_the_choices() -> None:
    with pytest.raises(ValueError, match="json, yaml, name"):
        rendering.render(_vm(), "xml", human=str)


def test_describe_shows_the_display() -> None:
    text = rendering.describe(_vm(display={"type": "vnc", "host": "10.0.0.1", "port": 5901}))
    assert "display: vnc 10.0.0.1:5901" in text


def _claim(vm: str, phase: str = "Bound", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": f"c-{vm}"}, "status": {"vmName": vm, "phase": phase, **status}}


@pytest.mark.parametrize(
    ("claims", "view_only", "expected"),
    [
        ([_claim("web", url="https://gw/a")], False, "https://gw/a"),
        ([_claim("web", url="https://gw/a", viewUrl="https://gw/v")], True, "https://gw/v"),
        ([_claim("other", url="https://gw/o"), _claim("web", url="https://gw/w")], False,
         "https://gw/w"),
    ],
)  # fmt: skip
def test_vnc_url_is_the_bound_claims_url(
    claims: list[dict[str, Any]], view_only: bool, expected: str
) -> None:
    assert rendering.vnc_url(_vm(), claims, view_only=view_only) == expected


@pytest.mark.parametrize(
    ("claims", "status", "words"),
    [
        ([], {}, "it has no display yet"),
        ([_claim("web", "Released", url="u")], {"display": {"host": "h", "port": 5900},
         "nodeName": "n2"}, "listens on h:5900 on node n2"),
        ([_claim("web", url="u")], {}, None),
    ],
)  # fmt: skip
def test_vnc_without_a_bound_claim_says_where_and_how(
    claims: list[dict[str, Any]], status: dict[str, Any], words: str | None
) -> None:
    if words is None:  # a bound claim without shadowing: view-only refused with the fix
        with pytest.raises(ValueError, match="allowShadowing"):
            rendering.vnc_url(_vm(), claims, view_only=True)
        return
    with pytest.raises(ValueError) as err:
        rendering.vnc_url(_vm(**status), claims, view_only=False)
    assert words in str(err.value)
    assert "kubevisor claim POOL --user USER" in str(err.value)


def test_not_found_lists_what_exists() -> None:
    text = rendering.not_found("VirtualMachine", "wbe", ["web", "db"], namespace="prod")
    assert text == (
        "VirtualMachine 'wbe' not found in namespace prod; VirtualMachines in namespace prod:"
        " db, web (-A lists every namespace)"
    )
    empty = rendering.not_found("Node", "n9", [], namespace=None)
    assert empty == "Node 'n9' not found in the cluster; there are no Nodes in the cluster"


def test_error_sentences_say_the_fix() -> None:
    assert "export KUBECONFIG=" in rendering.no_kubeconfig("no file")
    assert "hack/up" in rendering.unreachable("https://127.0.0.1:6443", "refused")
    assert "Role" in rendering.api_error(403, "Forbidden", "user x cannot patch")
    crds = rendering.api_error(404, "Not Found", "the server could not find the requested resource")
    assert "CRDs are not installed" in crds
    assert rendering.api_error(500, "Internal", "") == "API error 500 (Internal)"


def test_no_kubeconfig_is_one_sentence_not_a_traceback(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main.main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no cluster configured") and "KUBECONFIG" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("shell", completing.SHELLS)
def test_completion_scripts_cover_every_verb(shell: str) -> None:
    text = completing.script(shell, main.parser())
    for verb in ("list", "get", "start", "stop", "restart", "pause", "console", "vnc",
                 "migrate", "drain", "backup", "restore", "claim", "completion"):  # fmt: skip
        assert f"        {verb})" in text
    assert "json yaml name" in text  # -o choices
    assert "complete -F _kubevisor kubevisor kubectl-kubevisor" in text


def _complete(line: str) -> list[str]:
    """Run the bash script the way bash's completion does, for ``line`` (last word = cur)."""
    words = line.split(" ")
    script = completing.bash(main.parser(), prog="false")  # VM names: none (no cluster)
    cmd = (
        f"{script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)}); "
        f"COMP_CWORD={len(words) - 1}; _false; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    )
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True)
    return [w for w in out.stdout.splitlines() if w]


def test_bash_completion_completes_verbs_flags_and_choices() -> None:
    assert _complete("kubevisor re") == ["restart", "restore"]
    assert _complete("kubevisor get web -o ") == ["json", "yaml", "name"]
    assert "--all-namespaces" in _complete("kubevisor list --")
    assert _complete("kubevisor desktop c") == ["claim"]
    assert _complete("kubevisor backup web --mode ") == ["Full", "Incremental"]
