"""The user CLI (`kubevisor`, also `kubectl kubevisor`)."""
