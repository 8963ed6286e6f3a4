"""Where VMs run: pure decisions (``placing``), the capacity ledger (``ledger``, pure
state) and the process's placer that feeds the ledger from the API (``reserving``)."""
