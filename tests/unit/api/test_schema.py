"""The generated CRDs are structural and carry what kubectl and the agents rely on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kubevisor.api import crdgen, groups, kinds

pytestmark = pytest.mark.unit

FORBIDDEN = {"$ref", "$defs", "title", "anyOf", "allOf", "oneOf", "not", "const"}


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.get("properties", {}).items():
            yield from walk(value, f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                yield from walk(node[key], f"{path}[]")


def schema_of(kind: kinds.Kind) -> dict[str, Any]:
    crd = crdgen.build_crd(kind)
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("kind", kinds.KINDS, ids=lambda k: k.kind)
def test_structural(kind: kinds.Kind) -> None:
    for path, node in walk(schema_of(kind)):
        assert "type" in node, path
        assert not FORBIDDEN & node.keys(), (path, FORBIDDEN & node.keys())
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        assert node.get("default", ...) is not None, path
        if node["type"] == "object" and path not in ("", ".metadata"):
            # every object except metadata says what it may contain
            assert "properties" in node or "additionalProperties" in node, path
        if node["type"] == "string" and path not in (".apiVersion", ".kind"):
            assert "maxLength" in node or "enum" in node or "format" in node, (
                f"{path}: unbounded string (CEL cost estimates need maxLength)"
            )
        if node["type"] == "array":
            assert "maxItems" in node, f"{path}: unbounded list"


@pytest.mark.parametrize("kind", kinds.KINDS, ids=lambda k: k.kind)
def test_every_property_is_described(kind: kinds.Kind) -> None:
    for path, node in walk(schema_of(kind)):
        for name, sub in node.get("properties", {}).items():
            if f"{path}.{name}" != ".metadata":  # the API server forbids anything but type
                assert sub.get("description"), f"{path}.{name}"


@pytest.mark.parametrize("kind", kinds.KINDS, ids=lambda k: k.kind)
def test_status_has_common_fields(kind: kinds.Kind) -> None:
    status = schema_of(kind)["properties"]["status"]["properties"]
    assert {"phase", "conditions", "observedGeneration"} <= status.keys()
    assert status["phase"]["enum"]
    assert status["conditions"]["x-kubernetes-list-type"] == "map"


@pytest.mark.parametrize("kind", kinds.KINDS, ids=lambda k: k.kind)
def test_crd_envelope(kind: kinds.Kind) -> None:
    crd = crdgen.build_crd(kind)
    assert crd["metadata"]["name"] == f"{kind.plural}.{groups.GROUP}"
    names = crd["spec"]["names"]
    assert names["categories"] == [groups.CATEGORY]
    assert not {"vm", "vmi", "vms", "vmis"} & set(names["shortNames"]), "KubeVirt's names"
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert version["additionalPrinterColumns"][-1]["name"] == "Age"


def test_short_names_unique() -> None:
    short = [s for k in kinds.KINDS for s in k.short_names]
    assert len(short) == len(set(short))


def test_cel_rules_present_where_promised() -> None:
    def rules(kind: kinds.Kind) -> list[str]:
        return [
            r["rule"]
            for _, node in walk(schema_of(kind))
            for r in node.get("x-kubernetes-validations", [])
        ]

    assert any("quantity(self)" in r for r in rules(kinds.VMTEMPLATE))
    assert any("has(self.templateRef)" in r for r in rules(kinds.VIRTUALMACHINE))
    assert any("isCIDR" in r for r in rules(kinds.VRF))
    assert any("253" in r for r in rules(kinds.VRF))
    assert any("self.min <= self.max" in r for r in rules(kinds.DESKTOPPOOL))


def test_vrf_nodes_is_a_map() -> None:
    nodes = schema_of(kinds.VRF)["properties"]["status"]["properties"]["nodes"]
    assert nodes["type"] == "object"
    assert "ready" in nodes["additionalProperties"]["properties"]


def test_exclusive_minimum_uses_openapi_v3_0_form() -> None:
    policy = schema_of(kinds.MIGRATION)["properties"]["spec"]["properties"]["policy"]
    rtt = policy["properties"]["maxRTTMs"]
    assert rtt["minimum"] == 0 and rtt["exclusiveMinimum"] is True
    assert policy["properties"]["bandwidthMiBps"]["minimum"] == 1


def test_cli_check_reports_stale(tmp_path: Any) -> None:
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 0
    first = sorted(tmp_path.iterdir())[0]
    first.write_text(first.read_text() + "# edited\n")
    (tmp_path / f"stray.{groups.GROUP}.yaml").write_text("")
    problems = crdgen.check(tmp_path)
    assert len(problems) == 2
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 1
