"""Pure planning of simulated nodes: names, addresses, paths and generated configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubevisor.devenv import guest, nodes

BASE = Path("/var/lib/kubevisor-dev")


@pytest.mark.unit
def test_plan_names_addresses_and_paths() -> None:
    plan = nodes.plan_cluster("dev", 3, base_dir=BASE)
    assert plan.fabric_netns == "kv-dev-fabric"
    assert plan.shared_dir == BASE / "dev/shared"
    assert [n.name for n in plan.nodes] == ["node-1", "node-2", "node-3"]
    assert [n.netns for n in plan.nodes] == ["kv-dev-node-1", "kv-dev-node-2", "kv-dev-node-3"]
    assert [str(n.fabric_ip) for n in plan.nodes] == ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
    first = plan.nodes[0]
    assert first.libvirt_uri == (
        "qemu+unix:///system?socket=/var/lib/kubevisor-dev/dev/nodes/node-1/run/libvirt/libvirt-sock"
    )
    assert first.tcp_uri == "qemu+tcp://10.77.0.11/system"
    assert first.mnt_ns_file == BASE / "dev/ns/node-1.mnt"


@pytest.mark.unit
def test_node_addresses_leave_room_for_the_gateway_and_guests() -> None:
    plan = nodes.plan_cluster("big", nodes.MAX_NODES, base_dir=BASE)
    addresses = [n.fabric_ip for n in plan.nodes]
    assert len(set(addresses)) == len(addresses)
    for address in addresses:
        assert address in nodes.FABRIC_NETWORK
        assert nodes.FABRIC_GATEWAY < address < nodes.FIRST_GUEST_ADDRESS


@pytest.mark.unit
@pytest.mark.parametrize(
    ("cluster", "count", "base_dir", "message"),
    [
        ("Dev", 1, BASE, "cluster name"),
        ("", 1, BASE, "cluster name"),
        ("a" * 17, 1, BASE, "cluster name"),
        ("dev", 0, BASE, "node count"),
        ("dev", nodes.MAX_NODES + 1, BASE, "node count"),
        ("dev", 1, Path("/tmp") / ("x" * 70), "too long"),
    ],
)
def test_plan_rejects(cluster: str, count: int, base_dir: Path, message: str) -> None:
    with pytest.raises(nodes.NodesError, match=message):
        nodes.plan_cluster(cluster, count, base_dir=base_dir)


@pytest.mark.unit
def test_configs_bind_tcp_to_the_node_address_only() -> None:
    node = nodes.plan_cluster("dev", 2, base_dir=BASE).nodes[1]
    libvirtd = nodes.render_libvirtd_conf(node, host_uuid="00000000-0000-4000-8000-000000000002")
    assert 'listen_addr = "0.0.0.0"' in libvirtd
    assert "listen_tcp = 1" in libvirtd and "listen_tls = 0" in libvirtd
    assert 'host_uuid = "00000000-0000-4000-8000-000000000002"' in libvirtd
    qemu = nodes.render_qemu_conf(node)
    for line in (
        'user = "root"',
        'security_driver = "none"',
        "namespaces = []",
        "cgroup_controllers = []",
        'migration_host = "10.77.0.12"',
    ):
        assert line in qemu


@pytest.mark.unit
def test_hosts_file_names_every_node() -> None:
    plan = nodes.plan_cluster("dev", 2, base_dir=BASE)
    hosts = nodes.render_hosts(plan, host_hosts="127.0.0.1\tlocalhost\n")
    assert hosts.startswith("127.0.0.1\tlocalhost\n")
    assert "10.77.0.11\tnode-1\n" in hosts and "10.77.0.12\tnode-2\n" in hosts


@pytest.mark.unit
def test_mount_setup_binds_state_dirs_over_libvirt_paths() -> None:
    node = nodes.plan_cluster("dev", 1, base_dir=BASE).nodes[0]
    script = nodes.mount_setup_script(node)
    assert "hostname node-1" in script
    assert f"mount --bind {node.state_dir}/run/libvirt /run/libvirt" in script
    assert f"mount --bind {node.state_dir}/etc/hosts /etc/hosts" in script
    assert "mkdir -p /etc/hosts" not in script


@pytest.mark.unit
def test_exec_prefixes() -> None:
    plan_node = nodes.plan_cluster("dev", 1, base_dir=BASE).nodes[0]
    node = nodes.SimNode(
        name=plan_node.name,
        cluster="dev",
        index=1,
        netns=plan_node.netns,
        fabric_ip=str(plan_node.fabric_ip),
        state_dir=plan_node.state_dir,
        shared_dir=BASE / "dev/shared",
        libvirt_uri=plan_node.libvirt_uri,
        tcp_uri=plan_node.tcp_uri,
        host_uuid="00000000-0000-4000-8000-000000000001",
        mnt_ns_file=plan_node.mnt_ns_file,
        uts_ns_file=plan_node.uts_ns_file,
        libvirtd_pid=0,
        virtlogd_pid=0,
    )
    assert nodes.node_mount_exec_prefix(node) == [
        "nsenter",
        f"--mount={BASE}/dev/ns/node-1.mnt",
        "--",
    ]
    full = nodes.node_full_exec_prefix(node)
    assert "--net=/run/netns/kv-dev-node-1" in full and full[-1] == "--"
    assert nodes.SimNode.from_json(node.to_json()) == node


@pytest.mark.unit
def test_guest_domain_xml_is_tcg_with_direct_kernel_boot() -> None:
    image = guest.TinyImage(Path("/c/vmlinuz"), Path("/c/initrd.img"), Path("/c/tiny.qcow2"))
    xml = guest.tiny_domain_xml(
        "vm1",
        image=image,
        disk=Path("/s/vm1.qcow2"),
        console_log=Path("/s/vm1.log"),
        mac="52:54:00:00:00:01",
        cmdline=guest.kernel_cmdline(ip="10.77.0.100/24", script="echo hi"),
    )
    assert "<domain type='qemu'>" in xml
    assert "<kernel>/c/vmlinuz</kernel>" in xml
    assert "kv.ip=10.77.0.100/24" in xml and "kv.script=ZWNobyBoaQ==" in xml
    assert '<source bridge="kvbr0"/>' in xml
    assert '<mac address="52:54:00:00:00:01"/>' in xml
