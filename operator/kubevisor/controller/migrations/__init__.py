"""The Migration kind on the controller side: pure decisions first (``preconditions``,
``limits``); the handlers over the shared runtime come with the wiring (docs/migration.md).
"""
