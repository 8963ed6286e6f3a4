"""What the acting verbs (migrate, backup, restore, drain, claim) print: their sentence by
default, the object(s) they created or changed with -o (rendering.done)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from kubevisor.cli import main, rendering

pytestmark = pytest.mark.unit

MIGRATION = {
    "apiVersion": "kubevisor.io/v1alpha1",
    "kind": "Migration",
    "metadata": {"name": "web-m1", "managedFields": [{"manager": "x"}]},
    "status": {"phase": "Succeeded"},
}
NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}
VM = {"apiVersion": "kubevisor.io/v1alpha1", "kind": "VirtualMachine", "metadata": {"name": "a"}}
CLAIM = {"kind": "DesktopClaim", "metadata": {"name": "c1"}, "status": {"url": "https://x"}}


@pytest.mark.parametrize(
    ("done", "fmt", "want"),
    [
        # human: the sentence, unchanged
        (
            rendering.Done(MIGRATION, "total 2.1 s, downtime 40 ms"),
            None,
            "total 2.1 s, downtime 40 ms",
        ),
        (rendering.Done([NODE, VM], "node/n1 drained"), None, "node/n1 drained"),
        (rendering.Done(CLAIM, "https://x\ndesktop d1"), None, "https://x\ndesktop d1"),
        # -o name: each object under its own kind
        (rendering.Done(MIGRATION, "-"), "name", "migration/web-m1"),
        (rendering.Done([NODE, VM], "-"), "name", "node/n1\nvirtualmachine/a"),
        (rendering.Done(CLAIM, "-"), "name", "desktopclaim/c1"),
    ],
)
def test_done_text_and_names(done: rendering.Done, fmt: str | None, want: str) -> None:
    assert rendering.done(done, fmt) == want


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_done_objects_parse_without_managed_fields(fmt: str) -> None:
    load: Any = json.loads if fmt == "json" else yaml.safe_load
    one = load(rendering.done(rendering.Done(MIGRATION, "-"), fmt))
    assert one["kind"] == "Migration" and "managedFields" not in one["metadata"]
    many = load(rendering.done(rendering.Done([NODE, VM], "-"), fmt))
    assert many["kind"] == "List" and [o["kind"] for o in many["items"]] == [
        "Node",
        "VirtualMachine",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["migrate", "web", "-o", "json"],
        ["backup", "web", "-o", "yaml"],
        ["restore", "b1", "--as", "web2", "-o", "name"],
        ["drain", "n1", "-o", "json"],
        ["claim", "pool", "--user", "u", "-o", "json"],
        ["desktop", "claim", "pool", "--user", "u", "-o", "yaml"],
    ],
)
def test_acting_verbs_take_o(argv: list[str]) -> None:
    assert main.parser().parse_args(argv).output == argv[-1]
    assert main.parser().parse_args(argv[:-2]).output is None  # default: the sentence
