"""DesktopPool: keep the pool's desktops (VMs) at min/spare within max, and report."""
