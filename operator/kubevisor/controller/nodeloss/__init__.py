"""Node loss: lost nodes, fencing, restarting VMs elsewhere (docs/node-loss.md)."""
