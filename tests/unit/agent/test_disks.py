"""Disk planning and the deletion guard (pure, on a temporary directory tree)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubevisor.agent import disks, domainxml
from kubevisor.api import machines

pytestmark = pytest.mark.unit

IDENTITY = domainxml.Identity(namespace="ns", name="vm1", uid="u1")


@pytest.fixture
def layout(tmp_path: Path) -> disks.Layout:
    images = tmp_path / "images"
    (images / "tiny").mkdir(parents=True)
    (images / "tiny" / "tiny.qcow2").write_bytes(b"")
    (images / "flat.qcow2").write_bytes(b"")
    return disks.Layout(state_dir=tmp_path / "state", image_dir=images, shared_dir=tmp_path / "nas")


def _machine(*disk_list: dict[str, object]) -> machines.MachineSpec:
    return machines.MachineSpec.model_validate(
        {"cpu": {"cores": 1}, "memory": "64Mi", "disks": list(disk_list)}
    )


def test_image_names_resolve_in_image_dir(layout: disks.Layout) -> None:
    assert disks.resolve_image("tiny", layout.image_dir) == layout.image_dir / "tiny/tiny.qcow2"
    assert disks.resolve_image("flat", layout.image_dir) == layout.image_dir / "flat.qcow2"
    assert disks.resolve_image("nope", layout.image_dir) is None
    absolute = str(layout.image_dir / "flat.qcow2")
    assert disks.resolve_image(absolute, layout.image_dir) == Path(absolute)


def test_plan_paths_by_storage(layout: disks.Layout) -> None:
    plans = disks.plan(
        _machine(
            {"name": "root", "image": "tiny", "size": "1Gi"},
            {"name": "data", "size": "10Mi", "storage": "shared", "clone": "full"},
        ),
        IDENTITY,
        layout,
    )
    assert [p.path for p in plans] == [
        layout.state_dir / "disks/ns/vm1/root.qcow2",
        layout.shared_dir / "disks/ns/vm1/data.qcow2",  # type: ignore[operator]
    ]
    assert plans[0].base == layout.image_dir / "tiny/tiny.qcow2"
    assert plans[0].size_bytes == 1 << 30
    assert plans[1].base is None and plans[1].clone == "full"


def test_missing_image_is_image_not_found(layout: disks.Layout) -> None:
    with pytest.raises(disks.DiskError) as caught:
        disks.plan(_machine({"name": "root", "image": "missing"}), IDENTITY, layout)
    assert caught.value.reason == "ImageNotFound"
    assert "missing" in str(caught.value)


def test_shared_storage_needs_a_shared_dir(layout: disks.Layout) -> None:
    local_only = disks.Layout(state_dir=layout.state_dir, image_dir=layout.image_dir)
    with pytest.raises(disks.DiskError):
        disks.plan(
            _machine({"name": "d", "size": "1Mi", "storage": "shared"}), IDENTITY, local_only
        )


def test_deletable_skips_retained_and_base_images(layout: disks.Layout) -> None:
    plans = disks.plan(
        _machine(
            {"name": "root", "image": "tiny"},
            {"name": "keep", "size": "1Mi", "retain": True},
            {"name": "scratch", "size": "1Mi", "storage": "shared"},
        ),
        IDENTITY,
        layout,
    )
    victims = disks.deletable(plans, layout)
    assert victims == [plans[0].path, plans[2].path]
    assert all(layout.image_dir not in v.parents for v in victims)
    # A plan pointing outside our roots (or at a base image) is never deleted.
    rogue = disks.DiskPlan(
        name="x", path=layout.image_dir / "tiny/tiny.qcow2", base=None,
        clone="linked", size_bytes=1, retain=False, bus="virtio",
    )  # fmt: skip
    assert disks.deletable([rogue], layout) == []


def test_remove_deletes_files_and_empty_dirs(layout: disks.Layout) -> None:
    path = layout.state_dir / "disks/ns/vm1/root.qcow2"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    assert disks.remove([path, path]) == [path]
    assert not path.parent.exists()
    assert (layout.state_dir / "disks").exists()


def test_block_copy_paths_move_only_local_disks(layout: disks.Layout, tmp_path: Path) -> None:
    machine = _machine(
        {"name": "root", "image": "tiny", "storage": "shared"},
        {"name": "data", "size": "1Gi", "storage": "local"},
        {"name": "scratch", "size": "1Gi"},
    )
    there = tmp_path / "node-2"
    paths = disks.block_copy_paths(machine, IDENTITY, layout, there)
    # the destination is exactly what the target plans with its own layout
    target = disks.Layout(state_dir=there, image_dir=layout.image_dir,
                          shared_dir=layout.shared_dir)  # fmt: skip
    planned = {p.name: str(p.path) for p in disks.plan(machine, IDENTITY, target)}
    assert paths == {
        str(layout.state_dir / "disks/ns/vm1/data.qcow2"): planned["data"],
        str(layout.state_dir / "disks/ns/vm1/scratch.qcow2"): planned["scratch"],
    }
    assert planned["data"] == str(there / "disks/ns/vm1/data.qcow2")


def test_disk_on_a_storage_backend_is_refused_with_not_implemented(tmp_path: Path) -> None:
    machine = machines.MachineSpec.model_validate(
        {"cpu": {}, "memory": "1Gi", "disks": [{"name": "d", "size": "1Gi", "backend": "nas-1"}]}
    )
    layout = disks.Layout(state_dir=tmp_path / "state", image_dir=tmp_path / "img")
    with pytest.raises(disks.DiskError) as caught:
        disks.plan(machine, domainxml.Identity("ns", "vm", "uid"), layout)
    assert caught.value.reason == "NotImplemented"
    assert "StorageBackend 'nas-1'" in str(caught.value)
    assert not (tmp_path / "state").exists()  # nothing was created
