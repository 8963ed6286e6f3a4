"""The VMBackupSchedule reconciler: due instants become VMBackups; old ones are pruned."""
