"""VRFs: ``handlers`` (events, the pass over every VRF at once, the writes),
``planning`` (node selection, conflicts, table allocation) and ``status`` (the fields
we own); the last two pure."""
