#!/usr/bin/env bash
# Build kube-apiserver, etcd and kubectl of a pinned Kubernetes release from Go modules and
# cache them outside the repo, keyed by version. Prints the directory holding the binaries.
#
# Why from Go modules: there is no container engine here (no kind), and a real API server is
# what the tests must run against. k8s.io/kubernetes cannot be `go install`ed directly: its
# go.mod points the k8s.io/* staging modules at ./staging, so a wrapper module requires it
# and replaces every staging module with its published v0.X.Y twin. etcd's server comes
# from the same module graph (kubernetes already depends on go.etcd.io/etcd/server/v3).
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-1.37.2}"
CACHE="${KUBEVISOR_CACHE:-/var/cache/kubevisor}"
OUT="$CACHE/controlplane/v$KUBE_VERSION"
BINARIES=(kube-apiserver etcd kubectl)

have_all() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$OUT/$b" ]] || return 1; done
}

if have_all; then
  echo "$OUT"
  exit 0
fi

command -v go >/dev/null || { echo "build-controlplane: Go is required (https://go.dev) and was not found" >&2; exit 1; }

staging_minor="0.${KUBE_VERSION#1.}"
work="$CACHE/controlplane/src-v$KUBE_VERSION"
mkdir -p "$work" "$OUT"
cd "$work"

export GOFLAGS=-mod=mod
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
go mod download "k8s.io/kubernetes@v$KUBE_VERSION"
kmod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/v$KUBE_VERSION.mod"
go_directive="$(awk '$1=="go"{print $2; exit}' "$kmod")"

{
  echo "module kubevisor.local/controlplane"
  echo
  echo "go $go_directive"
  echo
  echo "require k8s.io/kubernetes v$KUBE_VERSION"
  echo
  echo "replace ("
  awk -v v="v$staging_minor" '$2=="=>" && $3 ~ /^\.\/staging\// {print "\t" $1 " => " $1 " " v}' "$kmod"
  echo ")"
} > go.mod

ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=${KUBE_VERSION#1.}"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
ldflags="${ldflags//gitMinor=${KUBE_VERSION#1.}/gitMinor=$(echo "${KUBE_VERSION#1.}" | cut -d. -f1)}"

echo "build-controlplane: building kube-apiserver, kubectl, etcd v$KUBE_VERSION (first time takes several minutes)" >&2
go build -trimpath -ldflags "$ldflags" -o "$OUT/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl >&2
go build -trimpath -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3 >&2

have_all
echo "$OUT"
