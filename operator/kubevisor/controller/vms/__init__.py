"""VirtualMachines: ``handlers`` (events, the pass, the writes), ``phases`` (one
reconcile as a scope and phase functions), ``status`` (the fields we own), and the pure
decisions ``resolving`` (templates, clones, MACs) and ``powering`` (runStrategy)."""
