"""VRFs: ``handlers`` (events, the pass over every VRF at once, the writes) and
``planning`` (node selection, conflicts, table allocation and the status we own; pure)."""
