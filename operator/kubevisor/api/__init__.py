"""Resource models: the single source of the CRD schemas. Imports nothing else of ours."""
