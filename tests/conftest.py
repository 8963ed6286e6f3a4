"""Shared fixtures. Explicit, not autouse: a test names what it depends on.

``cluster`` (session scope): a real kube-apiserver + etcd with the CRDs installed; see
``kubevisor.devenv.pytest_plugin``.
"""

pytest_plugins = ["kubevisor.devenv.pytest_plugin"]
