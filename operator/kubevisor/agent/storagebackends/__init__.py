"""StorageBackends on the node: ``reaching`` (which ones this node reaches, published in
its Lease)."""
