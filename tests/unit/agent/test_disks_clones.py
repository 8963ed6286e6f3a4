"""Clone disks (image ``vm:<ns>/<vm>/<disk>``): planning and the deletion guard (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubevisor.agent import disks, domainxml
from kubevisor.api import machines

pytestmark = pytest.mark.unit

CLONE = domainxml.Identity(namespace="ns", name="copy", uid="u2")
SOURCE = domainxml.Identity(namespace="ns", name="src", uid="")


@pytest.fixture
def layout(tmp_path: Path) -> disks.Layout:
    (tmp_path / "images").mkdir()
    return disks.Layout(state_dir=tmp_path / "state", image_dir=tmp_path / "images",
                        shared_dir=tmp_path / "nas")  # fmt: skip


def _machine(*disk_list: dict[str, object]) -> machines.MachineSpec:
    return machines.MachineSpec.model_validate(
        {"cpu": {"cores": 1}, "memory": "64Mi", "disks": list(disk_list)}
    )


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("tiny", None),
        ("/abs/base.qcow2", None),
        ("vm:ns/src/root", disks.VMImage(namespace="ns", name="src", disk="root")),
    ],
)
def test_parse_vm_image(image: str, expected: disks.VMImage | None) -> None:
    assert disks.parse_vm_image(image) == expected


@pytest.mark.parametrize(
    "image", ["vm:", "vm:ns/src", "vm:ns/src/root/x", "vm:ns/../root", "vm:ns//root", "vm:./a/b"]
)
def test_malformed_vm_image_is_invalid_spec(image: str) -> None:
    with pytest.raises(disks.DiskError) as err:
        disks.parse_vm_image(image)
    assert err.value.reason == "InvalidSpec"


@pytest.mark.parametrize("storage", ["local", "shared"])
def test_clone_source_resolves_with_the_layout(layout: disks.Layout, storage: str) -> None:
    root = layout.root(storage)  # type: ignore[arg-type]
    source = _touch(root / "ns/src/root.qcow2")
    machine = _machine(
        {"name": "root", "image": "vm:ns/src/root", "clone": "full", "storage": storage}
    )
    [plan] = disks.plan(machine, CLONE, layout)
    assert plan.path == root / "ns/copy/root.qcow2"
    assert plan.base == source and plan.source_vm == SOURCE and plan.clone == "full"
    assert disks.clone_sources([plan]) == [SOURCE]
    assert disks.deletable([plan], layout) == [plan.path]  # never the source


def test_missing_source_disk_is_image_not_found(layout: disks.Layout) -> None:
    machine = _machine({"name": "root", "image": "vm:ns/src/root", "storage": "shared"})
    with pytest.raises(disks.DiskError) as err:
        disks.plan(machine, CLONE, layout)
    assert err.value.reason == "ImageNotFound"
    assert "vm:ns/src/root" in str(err.value)


def test_copied_clone_no_longer_needs_its_source(layout: disks.Layout) -> None:
    """Once the clone's disk exists the source may be deleted: nothing to copy, and the
    clone's own file is still the one to delete."""
    own = _touch(layout.root("shared") / "ns/copy/root.qcow2")
    machine = _machine({"name": "root", "image": "vm:ns/src/root", "storage": "shared"})
    [plan] = disks.plan(machine, CLONE, layout)
    assert plan.path == own and plan.base is None
    assert disks.clone_sources([plan]) == []
    assert disks.deletable([plan], layout) == [own]


def test_a_vm_cannot_clone_itself(layout: disks.Layout) -> None:
    machine = _machine({"name": "root", "image": "vm:ns/copy/root", "storage": "shared"})
    with pytest.raises(disks.DiskError) as err:
        disks.plan(machine, CLONE, layout)
    assert err.value.reason == "InvalidSpec"


def test_sources_listed_once_per_vm(layout: disks.Layout) -> None:
    root = layout.root("shared")
    _touch(root / "ns/src/a.qcow2")
    _touch(root / "ns/src/b.qcow2")
    machine = _machine(
        {"name": "a", "image": "vm:ns/src/a", "storage": "shared"},
        {"name": "b", "image": "vm:ns/src/b", "storage": "shared"},
    )
    plans = disks.plan(machine, CLONE, layout)
    assert disks.clone_sources(plans) == [SOURCE]
