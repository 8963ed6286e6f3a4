"""Every manifest in docs/examples parses with its kind's model and round-trips exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubevisor.api import kinds, machines, virtualmachines, vmtemplates

EXAMPLES = Path(__file__).resolve().parents[3] / "docs" / "examples"

pytestmark = pytest.mark.unit


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((EXAMPLES / name).read_text())
    assert isinstance(data, dict)
    return data


def test_one_example_per_kind() -> None:
    found = {load(p.name)["kind"] for p in EXAMPLES.glob("*.yaml")}
    assert found == {k.kind for k in kinds.KINDS}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_round_trips(path: Path) -> None:
    data = load(path.name)
    kind = kinds.by_kind(data["kind"])
    parsed = kind.model.model_validate(data)
    assert parsed.to_json() == data


def test_vm_example_resolves_against_template_example() -> None:
    template = vmtemplates.VMTemplate.model_validate(load("vmtemplate.yaml"))
    vm = virtualmachines.VirtualMachine.model_validate(load("vm.yaml"))
    assert vm.spec.template_ref is not None
    assert vm.spec.template_ref.name == template.metadata.name
    machine = machines.effective(template.spec, vm.spec)
    assert machine.memory == "256Mi"
    assert [n.vlan for n in machine.nics] == [None, 100]
    assert machine.disks[0].image == "tiny"
    assert machine.boot.kernel == "/var/lib/kubevisor/images/tiny/vmlinuz"
