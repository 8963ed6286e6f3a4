"""kubevisor: virtual machines and VRF-lite virtual routers as Kubernetes custom resources."""
