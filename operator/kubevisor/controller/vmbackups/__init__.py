"""The VMBackup reconciler: admission (VM, turn, chain), following the agent's report,
and deletion that never breaks a kept incremental's chain."""
