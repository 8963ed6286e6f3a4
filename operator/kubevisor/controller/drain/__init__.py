"""Drain: cordoned Node objects get their LiveMigrate VMs moved away by Migrations."""
