"""The kubelet node's rendered configs, the chart values for it, and OCI archive layout:
pure functions, checked without starting anything."""

from __future__ import annotations

import hashlib
import json
import tarfile
import tomllib
from pathlib import Path

import pytest

from kubevisor.devenv import addon, kubelets, nodes, ociimages

pytestmark = pytest.mark.unit

LAYOUT = kubelets.NodeLayout(
    root=Path("/var/lib/kubevisor-dev/x/kubelet-node"), name="node-1",
    kubelet_port=10250, healthz_port=10248,
)  # fmt: skip


def test_containerd_config_is_private_and_has_what_this_host_needs() -> None:
    conf = tomllib.loads(kubelets.render_containerd_config(LAYOUT))
    assert conf["root"].startswith(str(LAYOUT.root))
    assert conf["state"].startswith(str(LAYOUT.root))
    assert conf["grpc"]["address"] == str(LAYOUT.containerd_socket)
    cri = conf["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True  # every sandbox fails here without it
    assert cri["sandbox_image"] == kubelets.pause_image()
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert cri["cni"]["conf_dir"] == str(LAYOUT.cni_conf_dir)


def test_kubelet_config_serves_on_the_node_ip_and_allows_cgroup_v1() -> None:
    conf = kubelets.render_kubelet_config(LAYOUT, ca_file=Path("/pki/ca.crt"))
    assert conf["failCgroupV1"] is False
    assert conf["address"] == LAYOUT.node_ip
    assert conf["healthzBindAddress"] == "127.0.0.1"
    assert conf["readOnlyPort"] == 0
    assert conf["makeIPTablesUtilChains"] is False
    assert conf["containerRuntimeEndpoint"] == f"unix://{LAYOUT.containerd_socket}"
    assert str(conf["podLogsDir"]).startswith(str(LAYOUT.root))


def test_cni_bridge_name_fits_an_interface_name() -> None:
    conf = json.loads(kubelets.render_cni_config(LAYOUT))
    assert conf["plugins"][0]["bridge"] == LAYOUT.cni_bridge
    assert len(LAYOUT.cni_bridge) <= 15


def test_chart_values_point_the_agent_at_the_simulated_node(tmp_path: Path) -> None:
    node = nodes.SimNode.from_json(
        {"name": "node-1", "cluster": "a", "index": 1, "host_uuid": "u", "virtlogd_pid": 2,
         "netns": "kv-a-node-1", "fabric_ip": "10.77.0.11",
         "state_dir": str(tmp_path / "n1"), "shared_dir": str(tmp_path / "shared"),
         "libvirt_uri": "qemu+unix:///system?socket=x", "tcp_uri": "qemu+tcp://10.77.0.11/system",
         "mnt_ns_file": "/m", "uts_ns_file": "/u", "libvirtd_pid": 1}
    )  # fmt: skip
    dev = addon.AddonCluster(
        name="a", base_dir=tmp_path, kubeconfig=tmp_path / "k", kubectl=Path("kubectl"),
        helm=Path("helm"), server="https://127.0.0.1:6443", image="kubevisor.local/kubevisor:abc",
        node=node,
    )  # fmt: skip
    values = addon.chart_values(dev, api_port=6443, gateway_port=7000)
    assert values["image"] == {
        "repository": "kubevisor.local/kubevisor", "tag": "abc", "pullPolicy": "Never",
    }  # fmt: skip
    assert values["apiServer"] == {"host": "127.0.0.1", "port": "6443"}
    agent = values["agent"]
    assert agent["libvirtUri"].endswith(f"{tmp_path}/n1/run/libvirt/libvirt-sock")
    assert agent["libvirtSocketDir"] == f"{tmp_path}/n1/run/libvirt"
    assert "--netns=kv-a-node-1" in agent["extraArgs"]
    assert "--address=10.77.0.11" in agent["extraArgs"]


def test_oci_archive_names_the_image_and_digests_match(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF not really")
    layer = tmp_path / "layer.tar"
    ociimages.single_file_layer(binary, layer, arcname="pause")
    out = tmp_path / "img.tar"
    ociimages.pack(layer=layer, name="kubevisor.local/pause:v1", out=out, entrypoint=["/pause"])
    with tarfile.open(out) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(files["index.json"])
    desc = index["manifests"][0]
    assert desc["annotations"]["io.containerd.image.name"] == "kubevisor.local/pause:v1"
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    manifest = json.loads(files["blobs/sha256/" + desc["digest"].split(":")[1]])
    config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]
    assert config["config"]["Entrypoint"] == ["/pause"]
    with tarfile.open(layer) as tar:
        assert tar.getmember("pause").mode == 0o755
