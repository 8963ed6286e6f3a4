"""OCI image archives from a root filesystem tarball, without a container engine.

Why: there is no Docker/Podman and no registry here, but containerd imports an OCI
image-layout archive (``ctr images import``) and kind loads one (``kind load
image-archive``). An image is only a config JSON, a manifest and layer blobs, so one
uncompressed layer made by mmdebstrap (or a tar holding a single static binary, for the
pause image) is packed here with nothing but the standard library.

The ``io.containerd.image.name`` annotation in ``index.json`` is what makes containerd name
the imported image (``org.opencontainers.image.ref.name`` carries the tag, as the spec
says).

    python -m kubevisor.devenv.ociimages pack --layer rootfs.tar --name NAME --out img.tar
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def image_config(
    *, layer_digest: str, env: Sequence[str], entrypoint: Sequence[str] = ()
) -> dict[str, object]:
    """The OCI image config of a one-layer linux/amd64 image (pure). ``layer_digest`` is
    the uncompressed layer's digest (its diff ID)."""
    config: dict[str, object] = {"Env": list(env), "WorkingDir": "/"}
    if entrypoint:
        config["Entrypoint"] = list(entrypoint)
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }


def index(*, name: str, manifest: dict[str, object]) -> dict[str, object]:
    """``index.json`` naming the image for containerd and for OCI tools (pure)."""
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    return {
        "schemaVersion": 2,
        "manifests": [
            {
                **manifest,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }


def pack(
    *,
    layer: Path,
    name: str,
    out: Path,
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
    entrypoint: Sequence[str] = (),
) -> None:
    """Write an OCI image-layout tar at ``out`` whose one layer is the tar ``layer``."""
    layer_digest, layer_size = _sha256_file(layer)
    config = json.dumps(
        image_config(layer_digest=layer_digest, env=env, entrypoint=entrypoint),
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": _descriptor(CONFIG_MEDIA_TYPE, config),
            "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": layer_digest, "size": layer_size}],
        },
        sort_keys=True,
    ).encode()
    idx = json.dumps(
        index(name=name, manifest=_descriptor(MANIFEST_MEDIA_TYPE, manifest)), sort_keys=True
    ).encode()
    with tarfile.open(out, "w") as tar:
        _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_bytes(tar, "index.json", idx)
        for data in (config, manifest):
            _add_bytes(tar, "blobs/sha256/" + hashlib.sha256(data).hexdigest(), data)
        tar.add(layer, arcname="blobs/sha256/" + layer_digest.removeprefix("sha256:"))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def single_file_layer(binary: Path, out: Path, *, arcname: str) -> None:
    """A layer tar holding one executable (the pause image's ``/pause``)."""
    with tarfile.open(out, "w") as tar:
        info = tar.gettarinfo(str(binary), arcname=arcname)
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode = 0o755
        with open(binary, "rb") as f:
            tar.addfile(info, f)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubevisor.devenv.ociimages", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="pack a layer tar into an OCI archive")
    p.add_argument("--layer", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--entrypoint", action="append", default=[])
    args = parser.parse_args(argv)
    pack(
        layer=args.layer,
        name=args.name,
        out=args.out,
        env=args.env or ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
        entrypoint=args.entrypoint,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
