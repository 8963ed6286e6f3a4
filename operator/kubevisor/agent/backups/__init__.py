"""The agent's VMBackup role: copies the disks of the VMs on this node (docs/backup.md)."""
