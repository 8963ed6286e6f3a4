"""StorageBackends: ``handlers`` (accepts each generation; the reach itself is in the
node Leases, read by placement and the migration preconditions)."""
