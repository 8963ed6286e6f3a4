"""Disk files made with the real qemu-img: linked overlays, full copies, empty disks."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from kubevisor.agent import diskfiles, disks, domainxml
from kubevisor.api import machines
from kubevisor.devenv import testing

pytestmark = pytest.mark.integration


def _info(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], capture_output=True, check=True
    ).stdout
    return dict(json.loads(out))


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """An 8 MiB qcow2 base image in ``tmp_path/images``."""
    testing.require_tools("qemu-img")
    images = tmp_path / "images"
    images.mkdir()
    path = images / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "8M"], check=True)
    return path


async def test_linked_full_and_empty(tmp_path: Path, base: Path) -> None:
    images = base.parent
    base_bytes = await asyncio.to_thread(base.read_bytes)
    layout = disks.Layout(
        state_dir=tmp_path / "state", image_dir=images, shared_dir=tmp_path / "nas"
    )
    machine = machines.MachineSpec.model_validate(
        {
            "cpu": {"cores": 1},
            "memory": "64Mi",
            "disks": [
                {"name": "linked", "image": "base", "size": "16Mi"},
                {"name": "full", "image": "base", "clone": "full", "storage": "shared"},
                {"name": "empty", "size": "4Mi", "retain": True},
            ],
        }
    )
    identity = domainxml.Identity(namespace="ns", name="vm", uid="u")
    plans = disks.plan(machine, identity, layout)
    assert [await diskfiles.ensure(p) for p in plans] == [True, True, True]
    assert [await diskfiles.ensure(p) for p in plans] == [False, False, False]  # never recreated

    linked, full, empty = (_info(p.path) for p in plans)
    assert linked["backing-filename"] == str(base) and linked["virtual-size"] == 16 << 20
    assert "backing-filename" not in full and full["virtual-size"] == 8 << 20
    assert "backing-filename" not in empty and empty["virtual-size"] == 4 << 20

    removed = diskfiles.remove(disks.deletable(plans, layout))
    assert removed == [plans[0].path, plans[1].path]
    assert plans[2].path.exists()
    assert await asyncio.to_thread(base.read_bytes) == base_bytes
