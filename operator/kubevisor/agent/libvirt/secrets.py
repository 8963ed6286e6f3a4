"""libvirt secrets: the private values a domain's XML names instead of holding (an iSCSI
LUN's CHAP password), so a password never appears in a domain definition."""

from __future__ import annotations

import asyncio
from xml.sax.saxutils import escape as xml_escape

import libvirt

from kubevisor.agent.libvirt import hypervisor


async def set_iscsi_secret(hv: hypervisor.Hypervisor, usage: str, value: str) -> None:
    """Define (or update) the private secret of usage type iscsi named ``usage`` with
    ``value`` on ``hv``'s libvirtd. Raises HypervisorError with libvirt's words."""

    def run() -> None:
        try:
            secret = hv.conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_ISCSI, usage)
        except libvirt.libvirtError:
            secret = hv.conn.secretDefineXML(
                "<secret ephemeral='no' private='yes'><usage type='iscsi'>"
                f"<target>{xml_escape(usage)}</target></usage></secret>"
            )
        secret.setValue(value.encode())

    try:
        await asyncio.to_thread(run)
    except libvirt.libvirtError as exc:
        raise hypervisor.HypervisorError(str(exc.get_error_message() or exc)) from exc
