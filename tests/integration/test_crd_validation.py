"""Bad input is refused by the API server itself (OpenAPI + CEL in the CRDs), with a 422
whose body names the field the user has to fix.

Each case starts from a valid manifest in docs/examples and breaks one thing.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubevisor.api import groups, kinds

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
NAMESPACE = "default"

Obj = dict[str, Any]


def example(name: str) -> Obj:
    data = yaml.safe_load((EXAMPLES / name).read_text())
    assert isinstance(data, dict)
    return data


def spec_set(path: str, value: Any) -> Callable[[Obj], None]:
    """Set ``spec.<path>`` (dots and [i] indexes) to ``value``."""

    def apply(obj: Obj) -> None:
        *parents, last = _split(path)
        node: Any = obj["spec"]
        for key in parents:
            node = node[key]
        node[last] = value

    return apply


def spec_del(path: str) -> Callable[[Obj], None]:
    """Remove ``spec.<path>``."""

    def apply(obj: Obj) -> None:
        *parents, last = _split(path)
        node: Any = obj["spec"]
        for key in parents:
            node = node[key]
        del node[last]

    return apply


def _split(path: str) -> list[str | int]:
    out: list[str | int] = []
    for part in path.replace("]", "").replace("[", ".").split("."):
        out.append(int(part) if part.isdigit() else part)
    return out


# (id, example file, mutation, substring the 422 body must contain)
CASES: list[tuple[str, str, Callable[[Obj], None], str]] = [
    ("vm-vlan-0", "vm.yaml", spec_set("nics[1].vlan", 0), "spec.nics[1].vlan"),
    ("vm-vlan-4095", "vm.yaml", spec_set("nics[1].vlan", 4095), "spec.nics[1].vlan"),
    ("vm-vlan-string", "vm.yaml", spec_set("nics[1].vlan", "ten"), "spec.nics[1].vlan"),
    ("vm-bad-mac", "vm.yaml", spec_set("nics[1].mac", "52:54:00:12:34"), "spec.nics[1].mac"),
    (
        "vm-multicast-mac",
        "vm.yaml",
        spec_set("nics[1].mac", "01:00:5e:00:00:01"),
        "spec.nics[1].mac",
    ),
    ("vm-zero-mac", "vm.yaml", spec_set("nics[1].mac", "00:00:00:00:00:00"), "spec.nics[1].mac"),
    (
        "vm-duplicate-mac",
        "vm.yaml",
        lambda o: [n.__setitem__("mac", "52:54:00:aa:bb:cc") for n in o["spec"]["nics"]],
        "spec.nics",
    ),
    ("vm-bad-selector-key", "vm.yaml", spec_set("nodeSelector", {"a b": "x"}), "spec.nodeSelector"),
    (
        "vrf-bad-selector-key",
        "vrf.yaml",
        spec_set("nodeSelector", {"-x/y": "x"}),
        "spec.nodeSelector",
    ),
    ("vm-nic-without-network", "vm.yaml", spec_del("nics[0].network"), "spec.nics[0].network"),
    ("vm-unknown-runstrategy", "vm.yaml", spec_set("runStrategy", "Sometimes"), "spec.runStrategy"),
    (
        "vm-neither-template-spec-nor-source",
        "vm.yaml",
        spec_del("templateRef"),
        "needs spec.templateRef, an inline spec (memory and disks) or spec.source",
    ),
    (
        "vm-source-both",
        "vm.yaml",
        spec_set("source", {"virtualMachine": {"name": "a"}, "backup": {"name": "b"}}),
        "spec.source",
    ),
    ("vm-source-empty", "vm.yaml", spec_set("source", {}), "spec.source"),
    ("vm-cores-string", "vm.yaml", spec_set("cpu", {"cores": "two"}), "spec.cpu.cores"),
    ("vm-cores-zero", "vm.yaml", spec_set("cpu", {"cores": 0}), "spec.cpu.cores"),
    ("vm-negative-memory", "vm.yaml", spec_set("memory", "-256Mi"), "spec.memory"),
    ("template-zero-memory", "vmtemplate.yaml", spec_set("memory", "0Mi"), "spec.memory"),
    ("template-memory-garbage", "vmtemplate.yaml", spec_set("memory", "lots"), "spec.memory"),
    ("template-missing-memory", "vmtemplate.yaml", spec_del("memory"), "spec.memory"),
    ("template-missing-cpu", "vmtemplate.yaml", spec_del("cpu"), "spec.cpu"),
    (
        "template-bad-disk-bus",
        "vmtemplate.yaml",
        spec_set("disks[0].bus", "ide"),
        "spec.disks[0].bus",
    ),
    (
        "template-disk-name-upper",
        "vmtemplate.yaml",
        spec_set("disks[0].name", "Root"),
        "spec.disks[0].name",
    ),
    (
        "template-duplicate-disks",
        "vmtemplate.yaml",
        spec_set("disks", [{"name": "root"}, {"name": "root"}]),
        "spec.disks",
    ),
    (
        "template-negative-disk-size",
        "vmtemplate.yaml",
        spec_set("disks[0].size", "-1Gi"),
        "spec.disks[0].size",
    ),
    ("vrf-table-254", "vrf.yaml", spec_set("table", 254), "spec.table"),
    ("vrf-table-0", "vrf.yaml", spec_set("table", 0), "spec.table"),
    ("vrf-table-too-big", "vrf.yaml", spec_set("table", 4294967296), "spec.table"),
    (
        "vrf-malformed-cidr",
        "vrf.yaml",
        spec_set("interfaces[0].addresses[0]", "10.10.0.300/24"),
        "spec.interfaces[0].addresses[0]",
    ),
    (
        "vrf-address-without-prefix",
        "vrf.yaml",
        spec_set("interfaces[0].addresses[0]", "10.10.0.1"),
        "spec.interfaces[0].addresses[0]",
    ),
    ("vrf-malformed-via", "vrf.yaml", spec_set("routes[0].via", "10.10.0.x"), "spec.routes[0].via"),
    (
        "vrf-via-wrong-family",
        "vrf.yaml",
        spec_set("routes[0].via", "fd00::1"),
        "spec.routes[0].via",
    ),
    (
        "vrf-prefix-host-bits",
        "vrf.yaml",
        spec_set("routes[1].prefix", "10.30.0.1/16"),
        "spec.routes[1].prefix",
    ),
    (
        "vrf-interface-host-and-network",
        "vrf.yaml",
        spec_set("interfaces[0].hostInterface", "eth1"),
        "spec.interfaces[0].hostInterface",
    ),
    (
        "vrf-vlan-without-network",
        "vrf.yaml",
        spec_del("interfaces[1].network"),
        "spec.interfaces[1]",
    ),
    (
        "vrf-interface-name-too-long",
        "vrf.yaml",
        spec_set("interfaces[0].name", "a-very-long-ifname"),
        "spec.interfaces[0].name",
    ),
    (
        "vrf-unicast-without-via-or-device",
        "vrf.yaml",
        spec_set("routes[0]", {"prefix": "10.9.0.0/16"}),
        "spec.routes[0].via",
    ),
    (
        "vrf-blackhole-with-via",
        "vrf.yaml",
        spec_set(
            "routes[2]", {"prefix": "192.0.2.0/24", "type": "blackhole", "via": "10.10.0.254"}
        ),
        "spec.routes[2].type",
    ),
    ("vrf-route-device-unknown", "vrf.yaml", spec_set("routes[1].device", "nope0"), "spec.routes"),
    ("vrf-unknown-backend", "vrf.yaml", spec_set("backend", "vlan"), "spec.backend"),
    ("vrf-zero-cpu", "vrf.yaml", spec_set("resources", {"cpu": "0"}), "spec.resources.cpu"),
    ("migration-without-vmname", "migration.yaml", spec_del("vmName"), "spec.vmName"),
    (
        "migration-zero-bandwidth",
        "migration.yaml",
        spec_set("policy.bandwidthMiBps", 0),
        "spec.policy.bandwidthMiBps",
    ),
    (
        "migration-negative-rtt",
        "migration.yaml",
        spec_set("policy.maxRTTMs", -1),
        "spec.policy.maxRTTMs",
    ),
    ("migration-cancel-string", "migration.yaml", spec_set("cancel", "yes"), "spec.cancel"),
    (
        "backup-unknown-storage",
        "vmbackup.yaml",
        spec_set("target.storage", "nas"),
        "spec.target.storage",
    ),
    ("backup-unknown-mode", "vmbackup.yaml", spec_set("mode", "Differential"), "spec.mode"),
    (
        "backup-path-escapes",
        "vmbackup.yaml",
        spec_set("target.path", "../../etc"),
        "spec.target.path",
    ),
    (
        "schedule-not-cron",
        "vmbackupschedule.yaml",
        spec_set("schedule", "every night"),
        "spec.schedule",
    ),
    (
        "schedule-full-every-beyond-keep",
        "vmbackupschedule.yaml",
        spec_set("fullEvery", 8),
        "spec.fullEvery",
    ),
    ("schedule-keep-zero", "vmbackupschedule.yaml", spec_set("keep", 0), "spec.keep"),
    ("pool-min-greater-than-max", "desktoppool.yaml", spec_set("min", 11), "spec.min"),
    ("pool-spare-greater-than-max", "desktoppool.yaml", spec_set("spare", 11), "spec.spare"),
    ("pool-max-zero", "desktoppool.yaml", spec_set("max", 0), "spec.max"),
    ("pool-without-template", "desktoppool.yaml", spec_del("templateRef"), "spec.templateRef"),
    (
        "pool-unknown-logoff",
        "desktoppool.yaml",
        spec_set("logoffPolicy", "reboot"),
        "spec.logoffPolicy",
    ),
    ("claim-without-poolref", "desktopclaim.yaml", spec_del("poolRef"), "spec.poolRef"),
    ("claim-without-user", "desktopclaim.yaml", spec_del("user"), "spec.user"),
    ("claim-user-integer", "desktopclaim.yaml", spec_set("user", 5), "spec.user"),
    ("rebalance-unknown-mode", "rebalancepolicy.yaml", spec_set("mode", "Spread"), "spec.mode"),
    (
        "rebalance-budget-zero",
        "rebalancepolicy.yaml",
        spec_set("maxMovesPerPass", 0),
        "spec.maxMovesPerPass",
    ),
    (
        "rebalance-wake-below-target",
        "rebalancepolicy.yaml",
        spec_set("consolidate.wakeUtilizationPercent", 70),
        "spec.consolidate.wakeUtilizationPercent",
    ),
    ("vm-rebalance-unknown", "vm.yaml", spec_set("rebalance", "Sometimes"), "spec.rebalance"),
    (
        "template-lun-on-virtio",
        "vmtemplate.yaml",
        spec_set("disks[0].device", "lun"),
        "spec.disks[0].device",
    ),
    ("backend-nfs-no-export", "storagebackend.yaml", spec_del("nfs.export"), "spec.nfs.export"),
    ("backend-nfs-without-nfs", "storagebackend.yaml", spec_del("nfs"), "type nfs takes nfs"),
    (
        "backend-nfs-with-iscsi",
        "storagebackend.yaml",
        spec_set("iscsi", {"portal": "10.0.0.2", "iqn": "iqn.2026-12.io.kv:t"}),
        "type nfs takes nfs",
    ),
    ("backend-iscsi-with-nfs", "storagebackend.yaml", spec_set("type", "iscsi"), "type iscsi"),
    ("backend-unknown-type", "storagebackend.yaml", spec_set("type", "ceph"), "spec.type"),
]


def _create(api: client.ApiClient, obj: Obj) -> Obj:
    kind = kinds.by_kind(obj["kind"])
    custom = client.CustomObjectsApi(api)
    if kind.scope == "Cluster":
        result = custom.create_cluster_custom_object(groups.GROUP, groups.VERSION, kind.plural, obj)
    else:
        result = custom.create_namespaced_custom_object(
            groups.GROUP, groups.VERSION, NAMESPACE, kind.plural, obj
        )
    assert isinstance(result, dict)
    return result


def _delete(api: client.ApiClient, obj: Obj) -> None:
    kind = kinds.by_kind(obj["kind"])
    custom = client.CustomObjectsApi(api)
    name = obj["metadata"]["name"]
    try:
        if kind.scope == "Cluster":
            custom.delete_cluster_custom_object(groups.GROUP, groups.VERSION, kind.plural, name)
        else:
            custom.delete_namespaced_custom_object(
                groups.GROUP, groups.VERSION, NAMESPACE, kind.plural, name
            )
    except ApiException as exc:
        if exc.status != 404:
            raise


def test_cases_cover_every_kind() -> None:
    assert {example(f)["kind"] for _, f, _, _ in CASES} == {k.kind for k in kinds.KINDS}
    assert len(CASES) >= 15


@pytest.mark.parametrize(("case_id", "source", "mutate", "field"), CASES, ids=[c[0] for c in CASES])
def test_bad_object_is_rejected(
    cluster: Any, case_id: str, source: str, mutate: Callable[[Obj], None], field: str
) -> None:
    obj = copy.deepcopy(example(source))
    if kinds.by_kind(obj["kind"]).scope != "Cluster":  # RebalancePolicy must be "cluster"
        obj["metadata"]["name"] = f"bad-{case_id}"
    mutate(obj)
    try:
        created = _create(cluster.api, obj)
    except ApiException as exc:
        text = str(exc.body)
        assert exc.status == 422, text
        body = json.loads(text)
        assert field in text, f"{field!r} not named in: {body.get('message')}"
        return
    _delete(cluster.api, created)
    pytest.fail(f"API server accepted the bad object {case_id}: {json.dumps(obj['spec'])}")


def test_missing_spec_is_rejected(cluster: Any) -> None:
    obj = example("vm.yaml")
    obj["metadata"]["name"] = "bad-no-spec"
    del obj["spec"]
    with pytest.raises(ApiException) as caught:
        _create(cluster.api, obj)
    assert caught.value.status == 422
    assert "spec" in str(caught.value.body)


# -- schema == runtime at the limits (issue 9 item 2) ------------------------------------
# For each bounded field, the value at the boundary is accepted by the real API server
# (the generated CRDs) AND by the API model the controller and agents parse with; one past
# it is refused by both. A field where the two disagreed is what made accepted objects
# fail at runtime.

# (id, example, spec path, value, accepted)
BOUNDS: list[tuple[str, str, str, Any, bool]] = [
    ("vrf-table-1", "vrf.yaml", "table", 1, True),
    ("vrf-table-0", "vrf.yaml", "table", 0, False),
    ("vrf-table-max", "vrf.yaml", "table", 4294967295, True),
    ("vrf-table-max+1", "vrf.yaml", "table", 4294967296, False),
    ("vrf-table-251", "vrf.yaml", "table", 251, True),
    ("vrf-table-252", "vrf.yaml", "table", 252, False),
    ("vrf-table-255", "vrf.yaml", "table", 255, False),
    ("vrf-table-256", "vrf.yaml", "table", 256, True),
    ("vrf-ifname-15", "vrf.yaml", "interfaces[0].name", "a" * 15, True),
    ("vrf-ifname-16", "vrf.yaml", "interfaces[0].name", "a" * 16, False),
    ("vrf-cpu-512", "vrf.yaml", "resources.cpu", "512", True),
    ("vrf-cpu-513", "vrf.yaml", "resources.cpu", "513", False),
    ("vrf-cpu-1k", "vrf.yaml", "resources.cpu", "1k", False),
    ("vrf-cpu-1e9", "vrf.yaml", "resources.cpu", "1e9", False),
    ("vrf-memory-1e9", "vrf.yaml", "resources.memory", "1e9", True),
    ("vrf-memory-1Ei", "vrf.yaml", "resources.memory", "1Ei", True),
    ("vrf-memory-2Ei", "vrf.yaml", "resources.memory", "2Ei", False),
    ("vm-vlan-1", "vm.yaml", "nics[1].vlan", 1, True),
    ("vm-vlan-0", "vm.yaml", "nics[1].vlan", 0, False),
    ("vm-vlan-4094", "vm.yaml", "nics[1].vlan", 4094, True),
    ("vm-vlan-4095", "vm.yaml", "nics[1].vlan", 4095, False),
    ("vm-cores-1", "vm.yaml", "cpu", {"cores": 1}, True),
    ("vm-cores-0", "vm.yaml", "cpu", {"cores": 0}, False),
    ("vm-cores-512", "vm.yaml", "cpu", {"cores": 512}, True),
    ("vm-cores-513", "vm.yaml", "cpu", {"cores": 513}, False),
    ("vm-gpus-16", "vm.yaml", "gpus", 16, True),
    ("vm-gpus-17", "vm.yaml", "gpus", 17, False),
    ("vm-cmdline-4096", "vm.yaml", "boot", {"cmdline": "x" * 4096}, True),
    ("vm-cmdline-4097", "vm.yaml", "boot", {"cmdline": "x" * 4097}, False),
    ("vm-priority-max", "vm.yaml", "priority", 1000000000, True),
    ("vm-priority-max+1", "vm.yaml", "priority", 1000000001, False),
    ("vm-priority-min", "vm.yaml", "priority", -1000000000, True),
    ("vm-priority-min-1", "vm.yaml", "priority", -1000000001, False),
    ("vm-priority-text", "vm.yaml", "priority", "high", False),
    ("vm-mac-zero", "vm.yaml", "nics[1].mac", "00:00:00:00:00:00", False),
    ("vm-mac-unicast", "vm.yaml", "nics[1].mac", "02:00:00:00:00:01", True),
    ("vrf-addr-any", "vrf.yaml", "interfaces[0].addresses", ["0.0.0.0/0"], False),
    ("vrf-addr-multicast", "vrf.yaml", "interfaces[0].addresses", ["224.0.0.1/24"], False),
    ("vrf-addr-unicast", "vrf.yaml", "interfaces[0].addresses", ["10.9.0.1/24"], True),
    (
        "vrf-duplicate-route",
        "vrf.yaml",
        "routes",
        [{"prefix": "10.1.0.0/16", "via": "10.10.0.254"}] * 2,
        False,
    ),
    ("vrf-name-63", "vrf.yaml", "@name", "n" * 63, True),
    ("vrf-name-64", "vrf.yaml", "@name", "n" * 64, False),
]


def _runtime_accepts(obj: dict[str, Any]) -> bool:
    try:
        kinds.by_kind(obj["kind"]).model.model_validate(obj)
    except pydantic.ValidationError:
        return False
    return True


@pytest.mark.parametrize(
    ("case_id", "source", "path", "value", "accepted"), BOUNDS, ids=[b[0] for b in BOUNDS]
)
def test_schema_and_runtime_agree_at_the_limit(
    cluster: Any, case_id: str, source: str, path: str, value: Any, accepted: bool
) -> None:
    obj = copy.deepcopy(example(source))
    obj["metadata"]["name"] = f"edge-{case_id.replace('+', 'p').lower()}"
    if path == "@name":
        obj["metadata"]["name"] = value
    else:
        spec_set(path, value)(obj)
    assert _runtime_accepts(obj) is accepted, "the API model disagrees with the table"
    try:
        created = _create(cluster.api, obj)
    except ApiException as exc:
        assert exc.status == 422, exc.body
        assert not accepted, f"API server refused a value the runtime takes: {exc.body}"
        return
    _delete(cluster.api, created)
    assert accepted, "API server accepted a value the runtime refuses"
