#!/usr/bin/env bash
# Build a pinned helm from the Go module proxy and cache it outside the repo, keyed by
# version. Prints the path of the helm binary. Idempotent: a cached binary is reused.
#
# Why from Go modules: the machine reaches package registries only (no GitHub release
# downloads), and the chart tests need the real helm (lint, template) rather than a
# re-implementation. A wrapper module requires helm so the build does not depend on
# helm's own go.mod being `go install`able, and so we can stamp the version like helm's
# Makefile does (otherwise `helm version` reports a bare "v4.3").
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-4.3.1}"
CACHE="${KUBEVISOR_CACHE:-/var/cache/kubevisor}"
OUT="$CACHE/helm/v$HELM_VERSION"
BIN="$OUT/helm"

if [[ -x "$BIN" ]]; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { echo "build-helm: Go is required (https://go.dev) and was not found" >&2; exit 1; }

major="${HELM_VERSION%%.*}"
if [[ "$major" == 3 ]]; then
  mod="helm.sh/helm/v3"
else
  mod="helm.sh/helm/v$major"
fi

work="$CACHE/helm/src-v$HELM_VERSION"
mkdir -p "$work" "$OUT"
cd "$work"

export GOFLAGS=-mod=mod
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export CGO_ENABLED=0
go mod download "$mod@v$HELM_VERSION"
hmod="$(go env GOMODCACHE)/cache/download/$mod/@v/v$HELM_VERSION.mod"
go_directive="$(awk '$1=="go"{print $2; exit}' "$hmod")"

{
  echo "module kubevisor.local/helm"
  echo
  echo "go $go_directive"
  echo
  echo "require $mod v$HELM_VERSION"
} > go.mod

ldflags="-s -w -X $mod/internal/version.version=v$HELM_VERSION"
ldflags+=" -X $mod/internal/version.metadata= -X $mod/internal/version.gitTreeState=clean"

echo "build-helm: building helm v$HELM_VERSION (first time takes a few minutes)" >&2
go build -trimpath -ldflags "$ldflags" -o "$BIN.tmp" "$mod/cmd/helm" >&2
mv "$BIN.tmp" "$BIN"
echo "$BIN"
