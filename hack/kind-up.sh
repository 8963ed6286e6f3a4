#!/usr/bin/env bash
# A kind cluster with kubevisor installed from this checkout: build the image with a
# container engine (Dockerfile), load it into the kind node, helm install the chart.
#
# For users with docker (or podman: ENGINE=podman) and kind. NOT run on the development
# machines, which have no container engine; there hack/up --helm gives the same chart on a
# real kubelet. VMs need a libvirtd that the agent can reach: this mounts the host's
# /run/libvirt and /var/lib/kubevisor into the kind node at the same paths (the host's
# QEMU opens the disk files the agent creates by path). Guest NICs are the open part:
# libvirtd creates taps in the host's network namespace, the agent pod sees the kind
# node's, so set agent.networks to bridges libvirtd can use and expect to adjust.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER="${KIND_CLUSTER:-kubevisor}"
ENGINE="${ENGINE:-docker}"
IMAGE="${IMAGE:-kubevisor.local/kubevisor:dev}"
HELM="${HELM:-helm}"
command -v kind >/dev/null || { echo "kind-up: kind is required (https://kind.sigs.k8s.io)" >&2; exit 1; }
command -v "$ENGINE" >/dev/null || { echo "kind-up: $ENGINE is required" >&2; exit 1; }

if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config - <<KIND
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    extraMounts:
      - {hostPath: /run/libvirt, containerPath: /run/libvirt}
      - {hostPath: /var/lib/kubevisor, containerPath: /var/lib/kubevisor, propagation: Bidirectional}
KIND
fi
"$ENGINE" build -t "$IMAGE" .
if [[ "$ENGINE" == docker ]]; then
  kind load docker-image "$IMAGE" --name "$CLUSTER"
else
  archive="$(mktemp --suffix=.tar)"
  "$ENGINE" save -o "$archive" "$IMAGE"
  kind load image-archive "$archive" --name "$CLUSTER"
  rm -f "$archive"
fi
"$HELM" upgrade --install kubevisor charts/kubevisor --kube-context "kind-$CLUSTER" \
  --namespace kubevisor-system --create-namespace --wait \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --set agent.advertiseHostIP=true "$@"
echo "kind-up: installed; kubectl --context kind-$CLUSTER get pods -n kubevisor-system" >&2
