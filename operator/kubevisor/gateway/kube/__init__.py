"""The gateway's only Kubernetes adapter (kubernetes_asyncio): reads the signing key, the
DesktopClaim a grant names and its VM's display, and hands back plain facts."""
