"""Disk planning and the deletion guard (pure, on a temporary directory tree)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kubevisor.agent import diskfiles, disks, domainxml
from kubevisor.agent.storagebackends import catalog
from kubevisor.api import machines, storagebackends

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
    assert diskfiles.remove([path, path]) == [path]
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


BACKENDS = {
    "nas-1": storagebackends.StorageBackendSpec.model_validate(
        {"type": "nfs", "nfs": {"server": "10.77.0.250", "export": "/srv/nfs/vms"}}
    ),
    "here": storagebackends.StorageBackendSpec.model_validate({"type": "local"}),
    "everywhere": storagebackends.StorageBackendSpec.model_validate({"type": "shared"}),
    "san": storagebackends.StorageBackendSpec.model_validate(
        {"type": "iscsi", "iscsi": {"portal": "10.77.0.251", "iqn": "iqn.2026-12.io.kv:t"}}
    ),
}


@pytest.mark.parametrize(
    ("backend", "reason", "words"),
    [
        ("nas-2", "StorageFailed", "StorageBackend 'nas-2' does not exist"),
    ],
    ids=["unknown-backend"],
)
def test_disk_on_a_backend_this_node_cannot_open_is_refused(
    tmp_path: Path, backend: str, reason: str, words: str
) -> None:
    machine = _machine({"name": "d", "size": "1Gi", "backend": backend})
    layout = disks.Layout(state_dir=tmp_path / "state", image_dir=tmp_path / "img")
    with pytest.raises(disks.DiskError) as caught:
        disks.plan(machine, IDENTITY, layout, BACKENDS)
    assert caught.value.reason == reason
    assert words in str(caught.value)
    assert not (tmp_path / "state").exists()  # nothing was created


def test_nfs_disk_is_a_file_in_the_exports_root_opened_by_qemus_client(
    layout: disks.Layout,
) -> None:
    machine = _machine(
        {"name": "root", "image": "tiny", "backend": "nas-1"},
        {"name": "data", "size": "16Mi", "backend": "nas-1", "retain": True},
    )
    root, data = disks.plan(machine, IDENTITY, layout, BACKENDS)
    assert root.nfs == disks.NFSFile("10.77.0.250", "/srv/nfs/vms", "ns.vm1.root.qcow2")
    assert root.nfs.url == "nfs://10.77.0.250/srv/nfs/vms/ns.vm1.root.qcow2"
    assert root.base == layout.image_dir / "tiny/tiny.qcow2"  # a node-local base
    assert data.base is None and data.size_bytes == 16 * 2**20
    placed = disks.placements([root, data])
    assert placed[0].network == domainxml.NetworkSource(
        protocol="nfs", host="10.77.0.250", name="/srv/nfs/vms/ns.vm1.root.qcow2"
    )
    # deleting the VM: the NFS image that is not retained, and no node file at all
    assert disks.deletable([root, data], layout) == []
    assert disks.deletable_nfs([root, data]) == [root.nfs]


def test_iscsi_disk_is_the_whole_lun_never_made_nor_deleted(layout: disks.Layout) -> None:
    machine = _machine({"name": "lun", "bus": "scsi", "device": "lun", "backend": "san"})
    (lun,) = disks.plan(machine, IDENTITY, layout, BACKENDS)
    assert lun.iscsi == disks.ISCSILun("10.77.0.251", 3260, "iqn.2026-12.io.kv:t", 1, "san")
    assert lun.base is None and lun.nfs is None
    chap = dataclasses.replace(lun, iscsi=dataclasses.replace(lun.iscsi, username="kv"))
    (placed,) = disks.placements([chap])
    assert placed.format == "raw" and placed.device == "lun" and placed.bus == "scsi"
    assert placed.network == domainxml.NetworkSource(
        protocol="iscsi", host="10.77.0.251", port=3260, name="iqn.2026-12.io.kv:t/1",
        username="kv", secret_usage="kubevisor-iscsi-san",
    )  # fmt: skip
    assert disks.deletable([chap], layout) == [] and disks.deletable_nfs([chap]) == []
    assert disks.local_disk_targets(machine) == []  # never block-copied
    with pytest.raises(disks.DiskError, match="a LUN has no backing file"):
        disks.plan(
            _machine({"name": "lun", "image": "tiny", "bus": "scsi", "backend": "san"}),
            IDENTITY, layout, BACKENDS,
        )  # fmt: skip


def test_nfs_disk_cannot_be_a_clone_of_another_vm(layout: disks.Layout) -> None:
    machine = _machine({"name": "d", "image": "vm:ns/src/root", "backend": "nas-1"})
    with pytest.raises(disks.DiskError, match="cannot be made on StorageBackend 'nas-1'"):
        disks.plan(machine, IDENTITY, layout, BACKENDS)


def test_local_and_shared_backends_are_that_storage(layout: disks.Layout) -> None:
    machine = _machine(
        {"name": "a", "size": "1Mi", "backend": "here"},
        {"name": "b", "size": "1Mi", "backend": "everywhere"},
        {"name": "c", "size": "1Mi", "backend": "nas-1"},
    )
    a, b, c = disks.plan(machine, IDENTITY, layout, BACKENDS)
    assert a.path == layout.state_dir / "disks/ns/vm1/a.qcow2" and a.nfs is None
    assert layout.shared_dir is not None
    assert b.path == layout.shared_dir / "disks/ns/vm1/b.qcow2" and b.nfs is None
    assert c.nfs is not None
    # block copy: only the node-local one (the machine read with its backends)
    resolved = disks.with_backends(machine, BACKENDS)
    assert disks.local_disk_targets(resolved) == ["vda"]
    assert list(disks.block_copy_paths(resolved, IDENTITY, layout, Path("/t"))) == [str(a.path)]
    # unread backends are never block-copied
    assert disks.local_disk_targets(machine) == []


def test_catalog_reads_each_readable_backend() -> None:
    objects = [
        {
            "metadata": {"name": "nas-1"},
            "spec": {"type": "nfs", "nfs": {"server": "s", "export": "/e"}},
        },
        {"metadata": {"name": "odd"}, "spec": {"type": "tape"}},
        {"metadata": {}, "spec": {"type": "local"}},
    ]
    assert list(catalog.specs_of(objects)) == ["nas-1"]
