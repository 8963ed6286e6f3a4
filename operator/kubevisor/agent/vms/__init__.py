"""The agent's VirtualMachine side, split by role over the generic runtime:

`watching` (which VMs an agent sees, by role), `realizing` (the wiring: informers, work
loop, libvirt events, ticks), `handling` (one pass: read, decide, act, report),
`placing` (host-side placement of NICs, pure), `cloning` (point-in-time copies of a
source VM's disks), `orphans` (domains whose VM is gone), `reporting` (status assembly)
and `statuses` (the agent's status fields, pure).
"""
