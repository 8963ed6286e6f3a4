"""Where the agent's API client comes from: a kubeconfig file, in-cluster, or $KUBECONFIG."""

from __future__ import annotations

from kubernetes_asyncio import client, config


async def load_config(kubeconfig: str | None) -> None:
    """Load ``kubeconfig`` if given, else the in-cluster account, else the default file."""
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig)
        return
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config()


def api_client() -> client.ApiClient:
    """A client over the loaded configuration (use as ``async with``)."""
    return client.ApiClient()
