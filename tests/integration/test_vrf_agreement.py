"""What the API server accepts for a VRF, the runtime accepts; what the runtime refuses,
the API server refuses first.

Each case is one VRF (name and spec). It goes through the CRD on a real API server
(server-side dry-run create: OpenAPI + CEL, nothing stored) and through the runtime
parsers: the controller's (``vrfsplanning.item_from``) and the agent's (``selecting.
select`` then ``planning.plan_node`` on a node whose kernel has everything, so only spec
rules can refuse). The test fails on any disagreement between the three, and when all
three agree on something other than the expected verdict.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubevisor.agent.vrfs import planning, selecting
from kubevisor.api import groups, kinds
from kubevisor.controller.vrfs import planning as vrfsplanning

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "vrf.yaml"
NAMESPACE = "default"
Obj = dict[str, Any]


def _base() -> Obj:
    data = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(data, dict)
    return data


def _spec(**changes: Any) -> Obj:
    spec = copy.deepcopy(_base()["spec"])
    spec.update(changes)
    return spec


def _resources(**values: str) -> Obj:
    return _spec(resources=values)


def _address(address: str) -> Obj:
    spec = _spec()
    spec["interfaces"][0]["addresses"] = [address]
    return spec


def _routes(*routes: Obj) -> Obj:
    return _spec(routes=list(routes))


def _iface_name(name: str) -> Obj:
    spec = _spec()
    spec["interfaces"][0]["name"] = name
    spec["routes"] = [r for r in spec["routes"] if "device" not in r]
    return spec


V4 = {"prefix": "10.9.0.0/16", "via": "10.10.0.254"}

# (id, metadata.name or None for the id, spec, expected: accepted)
CASES: list[tuple[str, str | None, Obj, bool]] = [
    ("example", None, _spec(), True),
    ("table-251", None, _spec(table=251), True),
    ("table-252", None, _spec(table=252), False),
    ("table-253", None, _spec(table=253), False),
    ("table-254", None, _spec(table=254), False),
    ("table-255", None, _spec(table=255), False),
    ("table-256", None, _spec(table=256), True),
    ("table-0", None, _spec(table=0), False),
    ("table-max", None, _spec(table=4294967295), True),
    ("table-too-big", None, _spec(table=4294967296), False),
    ("table-unset", None, {k: v for k, v in _spec().items() if k != "table"}, True),
    ("cpu-500m", None, _resources(cpu="500m"), True),
    ("cpu-2", None, _resources(cpu="2"), True),
    ("cpu-512", None, _resources(cpu="512"), True),
    ("cpu-1k", None, _resources(cpu="1k"), False),
    ("cpu-1e9", None, _resources(cpu="1e9"), False),
    ("cpu-0", None, _resources(cpu="0"), False),
    ("cpu-negative", None, _resources(cpu="-1"), False),
    ("cpu-garbage", None, _resources(cpu="lots"), False),
    ("memory-64Mi", None, _resources(memory="64Mi"), True),
    ("memory-1e9", None, _resources(memory="1e9"), True),
    ("memory-1G", None, _resources(memory="1G"), True),
    ("memory-1.5Ki", None, _resources(memory="1.5Ki"), True),
    ("memory-1Ei", None, _resources(memory="1Ei"), True),
    ("memory-2Ei", None, _resources(memory="2Ei"), False),
    ("memory-1e30", None, _resources(memory="1e30"), False),
    ("memory-fraction-rounds-up", None, _resources(memory="1.5"), True),
    ("memory-millibytes-round-up", None, _resources(memory="500m"), True),
    ("memory-0", None, _resources(memory="0"), False),
    ("memory-garbage", None, _resources(memory="12XB"), False),
    ("name-63", "n" * 63, _spec(), True),
    ("name-64", "n" * 64, _spec(), False),
    ("name-253", "n" * 253, _spec(), False),
    ("name-upper-case", "Blue", _spec(), False),
    ("address-private", None, _address("10.0.0.1/24"), True),
    ("address-host-route", None, _address("10.0.0.1/32"), True),
    ("address-ula", None, _address("fd00::1/64"), True),
    ("address-default", None, _address("0.0.0.0/0"), False),
    ("address-unspecified-v6", None, _address("::/0"), False),
    ("address-multicast", None, _address("224.0.0.1/24"), False),
    ("address-multicast-v6", None, _address("ff02::1/64"), False),
    ("address-loopback", None, _address("127.0.0.1/8"), False),
    ("address-link-local", None, _address("169.254.1.1/16"), False),
    ("address-link-local-v6", None, _address("fe80::1/64"), False),
    ("address-broadcast", None, _address("255.255.255.255/32"), False),
    ("address-netmask", None, _address("10.0.0.1/255.255.255.0"), False),
    ("address-no-prefix", None, _address("10.0.0.1"), False),
    ("address-zone", None, _address("fd00::1%eth0/64"), False),
    ("routes-distinct", None, _routes(V4, {**V4, "prefix": "10.8.0.0/16"}), True),
    ("routes-duplicate", None, _routes(V4, dict(V4)), False),
    ("routes-metric-0-is-unset", None, _routes(V4, {**V4, "metric": 0}), False),
    ("routes-other-metric", None, _routes(V4, {**V4, "metric": 5}), True),
    (
        "routes-duplicate-other-type",
        None,
        _routes(V4, {"prefix": "10.9.0.0/16", "type": "blackhole"}),
        False,
    ),
    ("route-v6-canonical", None, _routes({"prefix": "fd00::/8", "type": "blackhole"}), True),
    ("route-v6-upper-case", None, _routes({"prefix": "FD00::/8", "type": "blackhole"}), False),
    ("route-v6-long-form", None, _routes({"prefix": "fd00:0::/16", "type": "blackhole"}), False),
    ("route-host-bits", None, _routes({"prefix": "10.9.0.1/16", "type": "blackhole"}), False),
    ("interface-15-chars", None, _iface_name("a" * 15), True),
    ("interface-16-chars", None, _iface_name("a" * 16), False),
    ("interface-lo", None, _iface_name("lo"), False),
    ("route-device-unknown", None, _routes({"prefix": "10.9.0.0/16", "device": "nope0"}), False),
]


def _object(case_id: str, name: str | None, spec: Obj) -> Obj:
    return {
        "apiVersion": groups.API_VERSION,
        "kind": kinds.VRF.kind,
        "metadata": {"name": name or f"agree-{case_id.lower()}", "namespace": NAMESPACE},
        "spec": copy.deepcopy(spec),
    }


def server_verdict(api: client.ApiClient, obj: Obj) -> tuple[bool, str]:
    """(accepted, why) from a server-side dry-run create: schema and CEL, nothing stored."""
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            groups.GROUP, groups.VERSION, NAMESPACE, kinds.VRF.plural, obj, dry_run="All"
        )
    except ApiException as exc:
        assert exc.status == 422, exc.body
        return False, str(exc.body)[:300]
    return True, "accepted"


def controller_verdict(obj: Obj) -> tuple[bool, str]:
    """(accepted, why) from the controller's parser."""
    item = vrfsplanning.item_from(obj)
    return item.spec is not None, item.parse_error or "accepted"


def agent_verdict(obj: Obj) -> tuple[bool, str]:
    """(accepted, why) from the agent: as if the controller accepted the VRF with a table,
    on a node whose kernel has l3mdev and 802.1Q (so only spec rules can refuse)."""
    table = obj["spec"].get("table") if isinstance(obj["spec"].get("table"), int) else 1000
    decided = {
        **obj,
        "metadata": {**obj["metadata"], "generation": 1},
        "status": {"observedGeneration": 1, "tableAllocated": table},
    }
    selection = selecting.select([decided], labels=obj["spec"].get("nodeSelector") or {})
    if selection.waiting:
        (waiting,) = selection.waiting.values()
        return False, f"{waiting.problem.reason}: {waiting.problem.message}"
    assert selection.wanted, "the VRF was not selected onto its own labels"
    result = planning.plan_node(
        {n: planning.Assigned(s.spec, s.table) for n, s in selection.wanted.items()},
        bridge_for=lambda network, vlan: f"br-{network}",
        kernel_has_vrf=True,
        kernel_has_8021q=True,
    )
    if result.refused:
        (problem,) = result.refused.values()
        return False, f"{problem.reason}: {problem.message}"
    return True, "accepted"


def test_cases_are_distinct() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(("case_id", "name", "spec", "expected"), CASES, ids=[c[0] for c in CASES])
def test_api_server_and_runtime_agree(
    cluster: Any, case_id: str, name: str | None, spec: Obj, expected: bool
) -> None:
    obj = _object(case_id, name, spec)
    verdicts = {
        "api server": server_verdict(cluster.api, obj),
        "controller": controller_verdict(obj),
        "agent": agent_verdict(obj),
    }
    table = "\n".join(
        f"  {who:10} {'accepts' if ok else 'refuses'}: {why}" for who, (ok, why) in verdicts.items()
    )
    accepted = {ok for ok, _ in verdicts.values()}
    assert len(accepted) == 1, f"{case_id}: the API server and the runtime disagree\n{table}"
    assert accepted == {expected}, f"{case_id}: all agree, but not on {expected}\n{table}"
