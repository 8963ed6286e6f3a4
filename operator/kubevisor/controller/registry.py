"""Which handlers serve which kind, wired explicitly.

Every kind gets handlers: a kind whose logic is not built yet reports ``Ready=False``
with reason ``NotImplemented`` (``notimplemented``) instead of silence, so a user who
applies it sees why nothing happens. The kinds never import one another; where one
reacts to another (VMs to their templates), the wiring is here.
"""

from __future__ import annotations

from kubevisor.api import kinds
from kubevisor.controller import notimplemented
from kubevisor.controller.desktopclaims import handlers as desktopclaims
from kubevisor.controller.desktoppools import handlers as desktoppools
from kubevisor.controller.drain import handlers as drain
from kubevisor.controller.kube import operating
from kubevisor.controller.migrations import handlers as migrations
from kubevisor.controller.nodeloss import handlers as nodeloss
from kubevisor.controller.placement import reserving
from kubevisor.controller.rebalancing import handlers as rebalancing
from kubevisor.controller.runtime import running
from kubevisor.controller.storagebackends import handlers as storagebackends
from kubevisor.controller.vmbackups import handlers as vmbackups
from kubevisor.controller.vmbackupschedules import handlers as vmbackupschedules
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
        kinds.VMBACKUP.kind,
        kinds.VMBACKUPSCHEDULE.kind,
        kinds.REBALANCEPOLICY.kind,
        kinds.DESKTOPPOOL.kind,
        kinds.DESKTOPCLAIM.kind,
        kinds.STORAGEBACKEND.kind,
    }
)


def not_implemented_kinds() -> list[kinds.Kind]:
    """The kinds that still answer ``NotImplemented``."""
    return [k for k in kinds.KINDS if k.kind not in IMPLEMENTED]


def handlers(rt: running.Runtime) -> list[operating.Handler]:
    """Every handler of the controller process, sharing ``rt``."""
    placer = reserving.Placer()
    machines = vms.VMs(rt, placer=placer)
    templates = vmtemplates.VMTemplates(rt, on_change=machines.template_changed)
    routers = vrfs.VRFs(rt)
    # a pool's claims are decided in the pool's pass (they compete for its desktops)
    claims = desktopclaims.Claims(rt)
    pools = desktoppools.Pools(rt, settle=claims.settle)
    claims.wake = pools.wake
    return [
        *rt.handlers(),
        *machines.handlers(),
        *templates.handlers(),
        *routers.handlers(),
        *drain.Drain(rt).handlers(),
        *nodeloss.NodeLoss(rt, placer=placer).handlers(),
        *migrations.Migrations(rt).handlers(),
        *vmbackups.VMBackups(rt).handlers(),
        *vmbackupschedules.Schedules(rt).handlers(),
        *rebalancing.Rebalancing(rt).handlers(),
        *pools.handlers(),
        *claims.handlers(),
        storagebackends.handler(),
        *(notimplemented.handler(kind) for kind in not_implemented_kinds()),
    ]
