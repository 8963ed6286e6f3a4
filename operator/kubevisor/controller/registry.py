"""Which handlers serve which kind, wired explicitly.

Every kind gets handlers: a kind whose logic is not built yet reports ``Ready=False``
with reason ``NotImplemented`` (``notimplemented``) instead of silence, so a user who
applies it sees why nothing happens. The kinds never import one another; where one
reacts to another (VMs to their templates), the wiring is here.
"""

from __future__ import annotations

from kubevisor.api import kinds
from kubevisor.controller import notimplemented
from kubevisor.controller.drain import handlers as drain
from kubevisor.controller.kube import operating
from kubevisor.controller.migrations import handlers as migrations
from kubevisor.controller.placement import reserving
from kubevisor.controller.runtime import running
from kubevisor.controller.storagebackends import handlers as storagebackends
from kubevisor.controller.vms import handlers as vms
from kubevisor.controller.vmtemplates import handlers as vmtemplates
from kubevisor.controller.vrfs import handlers as vrfs

#: The kinds with handlers of their own.
IMPLEMENTED = frozenset(
    {
        kinds.VIRTUALMACHINE.kind,
        kinds.VMTEMPLATE.kind,
        kinds.VRF.kind,
        kinds.MIGRATION.kind,
        kinds.STORAGEBACKEND.kind,
    }
)


def not_implemented_kinds() -> list[kinds.Kind]:
    """The kinds that still answer ``NotImplemented``."""
    return [k for k in kinds.KINDS if k.kind not in IMPLEMENTED]


def handlers(rt: running.Runtime) -> list[operating.Handler]:
    """Every handler of the controller process, sharing ``rt``."""
    machines = vms.VMs(rt, placer=reserving.Placer())
    templates = vmtemplates.VMTemplates(rt, on_change=machines.template_changed)
    routers = vrfs.VRFs(rt)
    return [
        *rt.handlers(),
        *machines.handlers(),
        *templates.handlers(),
        *routers.handlers(),
        *drain.Drain(rt).handlers(),
        *migrations.Migrations(rt).handlers(),
        storagebackends.handler(),
        *(notimplemented.handler(kind) for kind in not_implemented_kinds()),
    ]
