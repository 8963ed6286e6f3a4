#!/usr/bin/env bash
# Build what a real single node needs beside the control plane: kubelet, kube-scheduler and
# kube-controller-manager of the same pinned release (from the wrapper module that
# hack/build-controlplane.sh writes), plus a tiny static pause binary packed as an OCI
# image. Cached outside the repo, keyed by version. Prints the directory.
#
# containerd, runc and the CNI plugins come from Debian (hack/setup's package list):
# Debian 12's containerd 1.6 speaks the CRI v1 that kubelet 1.37 needs.
#
# Why a pause of our own: the sandbox image usually comes from registry.k8s.io, which
# cannot be reached here; a pod sandbox only needs a process that sleeps and reaps.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_VERSION="${KUBE_VERSION:-1.37.2}"
CACHE="${KUBEVISOR_CACHE:-/var/cache/kubevisor}"
OUT="$CACHE/node/v$KUBE_VERSION"
BINARIES=(kubelet kube-scheduler kube-controller-manager pause.oci.tar)

have_all() {
  local b
  for b in "${BINARIES[@]}"; do [[ -s "$OUT/$b" ]] || return 1; done
}
if have_all; then
  echo "$OUT"
  exit 0
fi
command -v go >/dev/null || { echo "build-node: Go is required (https://go.dev) and was not found" >&2; exit 1; }

hack/build-controlplane.sh >/dev/null
src="$CACHE/controlplane/src-v$KUBE_VERSION"
[[ -f "$src/go.mod" ]] || { echo "build-node: $src/go.mod missing (remove $CACHE/controlplane/v$KUBE_VERSION and rerun)" >&2; exit 1; }
work="$CACHE/node/src-v$KUBE_VERSION"
mkdir -p "$work" "$OUT"
cp "$src/go.mod" "$src/go.sum" "$work/"
cd "$work"
export GOFLAGS=-mod=mod
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

minor="$(echo "${KUBE_VERSION#1.}" | cut -d. -f1)"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
echo "build-node: building kubelet, kube-scheduler, kube-controller-manager v$KUBE_VERSION" >&2
go build -trimpath -ldflags "$ldflags" -o "$OUT/" k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-controller-manager >&2

# pause: sleep until SIGTERM/SIGINT, reap children (what a sandbox's init does)
mkdir -p pause
cat >pause/main.go <<'GO'
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			if pid, _ := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 {
				break
			}
		}
	}
}
GO
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o pause/pause ./pause >&2
cd - >/dev/null
PY="${PYTHON:-.venv/bin/python}"
"$PY" -c 'import sys; from pathlib import Path; from kubevisor.devenv import ociimages as o; o.single_file_layer(Path(sys.argv[1]), Path(sys.argv[2]), arcname="pause")' \
  "$work/pause/pause" "$work/pause/layer.tar"
"$PY" -m kubevisor.devenv.ociimages pack --layer "$work/pause/layer.tar" \
  --name "kubevisor.local/pause:v$KUBE_VERSION" --entrypoint /pause --out "$OUT/pause.oci.tar.tmp"
mv "$OUT/pause.oci.tar.tmp" "$OUT/pause.oci.tar"
have_all
echo "$OUT"
