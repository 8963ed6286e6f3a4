#!/usr/bin/env bash
# Build the kubevisor container image without a registry or a container engine: a Debian
# rootfs made by mmdebstrap with the kubevisor wheel (and its dependencies) in a venv,
# packed as one OCI-layout archive that `ctr images import` (containerd) and
# `kind load image-archive` accept. Prints the archive's path.
#
# Why this way: there is no Docker/Podman here and no registry to push to; containerd
# imports an OCI archive directly and pods use it with imagePullPolicy: Never.
#
# Cached by content: the key hashes the package sources (without kubevisor.devenv, the
# development tooling, which the image leaves out), pyproject.toml, this script, the OCI
# packer and the pinned noVNC, so a rebuild happens only when one of them changes. The image name is
# kubevisor.local/kubevisor:<key> (printed by `hack/build-image.sh --name`).
#
# libvirt: Debian's python3-libvirt (the venv sees system site-packages), so nothing is
# compiled. qemu-utils: the agent runs qemu-img. bird2, frr and frr-pythontools: the VRFs'
# routing daemons the agent runs (routing.daemon bird/frr; frr-reload is in
# frr-pythontools); their packages create the bird and frr accounts the daemons drop to.
# noVNC: the gateway serves it. User 65532
# (the chart's runAsUser for controller and gateway) exists: kopf asks getpwuid() for it.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${KUBEVISOR_CACHE:-/var/cache/kubevisor}"
NOVNC_DIR="${KUBEVISOR_NOVNC_DIR:-$CACHE/novnc}"
SUITE="${KUBEVISOR_IMAGE_SUITE:-bookworm}"
MIRROR="${KUBEVISOR_IMAGE_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=python3,python3-venv,python3-libvirt,qemu-utils,iproute2,ca-certificates,bird2,frr,frr-pythontools

key="$(
  {
    find operator -path operator/kubevisor/devenv -prune -o -type f \
      \( -name '*.py' -o -name '*.html' -o -name '*.typed' \) -print0 | sort -z | xargs -0 sha256sum
    sha256sum pyproject.toml hack/build-image.sh operator/kubevisor/devenv/ociimages.py
    cat "$NOVNC_DIR/.version" 2>/dev/null || true
    echo "$SUITE $PACKAGES"
  } | sha256sum | cut -c1-16
)"
NAME="kubevisor.local/kubevisor:$key"
OUT="$CACHE/image/kubevisor-$key.oci.tar"
if [[ "${1:-}" == "--name" ]]; then
  echo "$NAME"
  exit 0
fi
if [[ -f "$OUT" ]]; then
  echo "$OUT"
  exit 0
fi
command -v mmdebstrap >/dev/null || { echo "build-image: mmdebstrap is required (apt-get install mmdebstrap)" >&2; exit 1; }
PY="${PYTHON:-.venv/bin/python}"

mkdir -p "$CACHE/image"
tmp="$(mktemp -d "$CACHE/image/build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "build-image: wheels" >&2
# the package and its dependencies (not libvirt-python: Debian's python3-libvirt is used)
"$PY" -m pip wheel -q --wheel-dir "$tmp/wheels" . >&2
mkdir -p "$tmp/extra/usr/share/kubevisor"
if [[ -d "$NOVNC_DIR" ]]; then cp -a "$NOVNC_DIR" "$tmp/extra/usr/share/kubevisor/novnc"; fi

echo "build-image: Debian $SUITE rootfs with $PACKAGES (mmdebstrap)" >&2
mmdebstrap --quiet --variant=apt --include="$PACKAGES" \
  --customize-hook="copy-in $tmp/wheels /tmp" \
  --customize-hook="sync-in $tmp/extra /" \
  --customize-hook='chroot "$1" groupadd --system --gid 65532 kubevisor' \
  --customize-hook='chroot "$1" useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin kubevisor' \
  --customize-hook='chroot "$1" python3 -m venv --system-site-packages /opt/kubevisor' \
  --customize-hook='chroot "$1" /opt/kubevisor/bin/pip install -q --no-index --no-compile --find-links /tmp/wheels kubevisor' \
  --customize-hook='rm -rf "$1"/opt/kubevisor/lib/python3*/site-packages/kubevisor/devenv' \
  --customize-hook='rm -rf "$1"/tmp/wheels "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
  --customize-hook='for b in "$1"/opt/kubevisor/bin/kubevisor* "$1"/opt/kubevisor/bin/kubectl-kubevisor; do ln -s "${b#"$1"}" "$1/usr/local/bin/"; done' \
  "$SUITE" "$tmp/rootfs.tar" "$MIRROR"

echo "build-image: OCI archive $NAME" >&2
"$PY" -m kubevisor.devenv.ociimages pack --layer "$tmp/rootfs.tar" --name "$NAME" \
  --env PATH=/opt/kubevisor/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --out "$tmp/image.tar"
mv "$tmp/image.tar" "$OUT"
# keep the newest few (other checkouts may be building other sources)
ls -t "$CACHE"/image/kubevisor-*.oci.tar | tail -n +4 | xargs -r rm -f
echo "$OUT"
