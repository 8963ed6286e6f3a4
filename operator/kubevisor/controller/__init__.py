"""The controller: decides template resolution, placement, migration, pool sizing, VRF node selection."""
