"""The agent's side of a live migration (docs/architecture.md, "Migration"): pure plans
for the source role (:mod:`.sourcing`) and the target role (:mod:`.targeting`). The
agent reports facts; the controller sets the phases."""
