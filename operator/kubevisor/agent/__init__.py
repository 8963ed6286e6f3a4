"""The per-node agent: makes it so through libvirt and netlink, reports status."""
