"""The agent's side of a live migration (docs/architecture.md, "Migration"): the loop
(:mod:`.handling`), the two roles' adapters (:mod:`.driving` for the source,
:mod:`.receiving` for the target) and their pure plans (:mod:`.sourcing`,
:mod:`.targeting`). The agent reports facts; the controller sets the phases."""
