"""The controller: template resolution, placement, migration, pool sizing, VRF node selection."""
