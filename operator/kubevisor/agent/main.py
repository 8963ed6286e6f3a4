"""``kubevisor-agent``: the per-node process that realizes VMs placed on its node.

It knows its node name, renews the node's Lease (heartbeat + capacity + segments),
watches only the VirtualMachines labelled for its node, and realizes them with libvirt
and netlink. It keeps no state of its own: restarted, it adopts running domains and
re-applies status. SIGTERM/SIGINT stop it cleanly (domains keep running).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
from pathlib import Path

from kubevisor.agent import disks, domainxml, management, metrics, segmenting, segments
from kubevisor.agent.backups import handling as backuphandling
from kubevisor.agent.kernel import bridges, interfaces
from kubevisor.agent.kube import connecting, events, leases, objects
from kubevisor.agent.libvirt import Hypervisor
from kubevisor.agent.storagebackends import catalog as backendcatalog
from kubevisor.agent.storagebackends import diskstore, nfsdisks
from kubevisor.agent.storagebackends import reaching as storagereach
from kubevisor.agent.vms import realizing
from kubevisor.agent.vrfs import handling as vrfhandling
from kubevisor.api import kinds, nodes, quantities

logger = logging.getLogger("kubevisor.agent")


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _network(text: str) -> tuple[str, str | None]:
    """``NAME=BRIDGE`` (a bridge the node provides) or ``NAME`` (managed: the agent owns
    the bridge ``kvn-NAME``, created when a VM or VRF needs it, deleted when none does)."""
    name, sep, bridge = text.partition("=")
    if not name or (sep and not bridge):
        raise argparse.ArgumentTypeError(f"expected NAME or NAME=BRIDGE, got {text!r}")
    return name, bridge if sep else None


def network_mapping(flags: list[tuple[str, str | None]]) -> tuple[dict[str, str], frozenset[str]]:
    """network -> bridge, and the managed networks, from the ``--network`` flags (pure).
    No flag at all means ``default=kvbr0``."""
    if not flags:
        return {"default": "kvbr0"}, frozenset()
    bridges = {name: bridge or segments.managed_bridge_name(name) for name, bridge in flags}
    managed = frozenset(name for name, bridge in flags if bridge is None)
    return bridges, managed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kubevisor-agent", description=__doc__.split("\n")[0])
    p.add_argument("--node", required=True, help="this node's name (Lease name, label value)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, in-cluster)")
    p.add_argument("--libvirt-uri", default="qemu:///system")
    p.add_argument("--netns", help="network namespace of the node for netlink (default: own)")
    p.add_argument("--state-dir", type=Path, default=Path("/var/lib/kubevisor"))
    p.add_argument("--image-dir", type=Path, default=Path("/var/lib/kubevisor/images"))
    p.add_argument("--shared-dir", type=Path, help="shared storage mounted on every node")
    p.add_argument("--cpu", type=int, default=os.cpu_count() or 1, help="cores offered")
    p.add_argument("--memory", default=None, help="memory offered (quantity), default: host RAM")
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--label", type=_pair, action="append", default=[], metavar="K=V")
    p.add_argument(
        "--network", type=_network, action="append", default=[], metavar="NAME[=BRIDGE]",
        help='bridge realizing a network (repeatable; default "default=kvbr0"); a bare NAME'
        " is a node-local network whose bridge kvn-NAME the agent creates and removes",
    )  # fmt: skip
    p.add_argument("--address", help="node address (VNC listens here; default 127.0.0.1)")
    p.add_argument(
        "--migration-uri",
        help="libvirt URI peers use to migrate to this node (default with "
        "--management-interface: qemu+tcp://<its address>/system)",
    )
    p.add_argument(
        "--management-interface",
        help="the node's management NIC: migration streams to this node use its address, "
        "never a VM network's bridge (docs/storage.md, management network)",
    )
    p.add_argument("--stop-timeout", type=float, default=30.0, help="ACPI shutdown grace (s)")
    p.add_argument(
        "--vrf-resync-seconds", type=float, default=30.0,
        help="VRF drift repair interval (s); 0 disables the VRF loop",
    )  # fmt: skip
    p.add_argument(
        "--rtt-probe-seconds", type=float, default=leases.PROBE_INTERVAL_S,
        help="interval of the RTT probes to peer nodes' libvirtd (s)",
    )  # fmt: skip
    p.add_argument(
        "--lease-duration-seconds", type=_lease_duration, default=nodes.LEASE_DURATION_S,
        help="leaseDurationSeconds of the node's Lease: how long after the last renewal the"
        " controller treats the node as lost (default 30; shorter for tests, renewed every"
        " third of it at most)",
    )  # fmt: skip
    p.add_argument(
        "--metrics-address", default="127.0.0.1",
        help="address the Prometheus metrics listen on (default 127.0.0.1)",
    )  # fmt: skip
    p.add_argument(
        "--metrics-port", type=int, default=0, help="Prometheus metrics port (default 0: off)"
    )
    p.add_argument("--verbose", "-v", action="store_true")
    return p.parse_args(argv)


def _lease_duration(text: str) -> int:
    """A Lease duration flag: whole seconds, at least 3 (renewals every third of it)."""
    value = int(text)
    if value < 3:
        raise argparse.ArgumentTypeError("must be at least 3 seconds")
    return value


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


async def run(args: argparse.Namespace) -> None:
    """Build the parts from the flags and run until cancelled."""
    if args.metrics_port:
        metrics.serve(args.metrics_address, args.metrics_port)
    await connecting.load_config(args.kubeconfig)
    networks, managed = network_mapping(args.network)
    memory = quantities.to_bytes(args.memory) if args.memory else _host_memory()
    management_address = None
    if args.management_interface:
        found = await asyncio.to_thread(interfaces.read, args.netns, args.management_interface)
        management_address = management.address(args.management_interface, found, networks)
        logger.info("management interface %s: %s", args.management_interface, management_address)
    migration_uri = args.migration_uri or (
        f"qemu+tcp://{management_address}/system" if management_address else None
    )
    layout = disks.Layout(
        state_dir=args.state_dir, image_dir=args.image_dir, shared_dir=args.shared_dir
    )
    capacity = nodes.Capacity(
        cpu=args.cpu,
        memory_bytes=memory,
        gpus=args.gpus,
        networks=tuple(sorted(networks)),
        shared_storage=str(args.shared_dir) if args.shared_dir else None,
        local_storage=str(args.state_dir),
        migration_uri=migration_uri,
        address=args.address,
        management_address=management_address,
    )
    cfg = realizing.AgentConfig(
        node=args.node,
        layout=layout,
        networks=networks,
        managed_networks=managed,
        facts=domainxml.HostFacts(display_address=args.address or "127.0.0.1"),
        stop_timeout=args.stop_timeout,
    )
    async with connecting.api_client() as api, Hypervisor(args.libvirt_uri) as hv:
        cpus = await hv.cpu_models()
        capacity = capacity.model_copy(
            update={"cpu_models": cpus.usable, "host_cpu_model": cpus.host_model}
        )
        heartbeat = leases.Heartbeat(
            api,
            node=args.node,
            labels=dict(args.label),
            capacity=capacity,
            duration_s=args.lease_duration_seconds,
        )
        adapter = bridges.Segments(netns=args.netns)
        node_segments = segmenting.NodeSegments(
            adapter,
            users=(segmenting.VMS, segmenting.VRFS)
            if args.vrf_resync_seconds > 0
            else (segmenting.VMS,),
            networks=networks,
            managed=managed,
            heartbeat=heartbeat,
        )
        backends = backendcatalog.Catalog(
            functools.partial(objects.list_cluster_objects, api, kinds.STORAGEBACKEND.plural)
        )
        nfs = nfsdisks.NFSDisks(args.netns)
        agent = realizing.Agent(
            api,
            hv,
            cfg,
            segments=adapter,
            heartbeat=heartbeat,
            node_segments=node_segments,
            store=diskstore.DiskStore(
                layout,
                backends,
                nfs,
                diskstore.CHAP(objects.Secrets(api), hv, nodes.LEASE_NAMESPACE),
            ),
        )
        logger.info(
            "agent for node %s: libvirt %s, networks %s (managed: %s)",
            args.node, hv.uri, networks, sorted(managed),
        )  # fmt: skip
        probing = asyncio.get_running_loop().create_task(
            heartbeat.probe_peers(args.rtt_probe_seconds)
        )
        reaching_backends = asyncio.get_running_loop().create_task(
            storagereach.run(
                backends.list,
                heartbeat.set_storage_backends,
                shared_dir=args.shared_dir,
                netns=args.netns,
                announce=events.Recorder(api, kind=kinds.STORAGEBACKEND.kind, node=args.node).post,
                node=args.node,
            )
        )
        vrfs = None
        if args.vrf_resync_seconds > 0:
            vrfs = asyncio.get_running_loop().create_task(
                vrfhandling.run_vrfs(
                    node=args.node,
                    labels=dict(args.label),
                    api_client=api,
                    node_netns=args.netns,
                    bridge_for=vrfhandling.bridge_mapper(networks),
                    resync=args.vrf_resync_seconds,
                    node_segments=node_segments,
                )
            )
        backups = asyncio.get_running_loop().create_task(
            backuphandling.BackupHandler(api, hv, node=args.node, layout=layout).run()
        )
        try:
            await agent.run()
        finally:
            backups.cancel()
            with contextlib.suppress(BaseException):
                await backups
            for task in (probing, reaching_backends):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            if vrfs is not None:
                vrfs.cancel()
                with contextlib.suppress(BaseException):
                    await vrfs
            nfs.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        main_pid = os.getpid()

        def on_signal(signum: int, _frame: object) -> None:
            # Not loop.add_signal_handler: pyroute2 forks helpers to enter a netns, and a
            # forked child shares asyncio's wakeup fd, so a SIGTERM sent to the child would
            # stop the agent. Here the child just dies as it would by default.
            if os.getpid() != main_pid:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            loop.call_soon_threadsafe(task.cancel)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        try:
            await run(args)
        except asyncio.CancelledError:
            logger.info("stopping")

    try:
        asyncio.run(guarded())
    except management.ManagementError as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
