"""The targets and ratios the benchmarks publish: which way round, and on which number."""

from __future__ import annotations

from typing import Any

import pytest

from . import load

pytestmark = pytest.mark.unit

vm_start = load("vm_start")
vrf = load("vrf")


# --- bench/vm_start.py: status writes per VM --------------------------------------------


def _set(mean_status: float, max_status: int) -> dict[str, Any]:
    return {"writes_to_running": {"status": mean_status, "max_status": max_status}}


@pytest.mark.parametrize(
    ("mean_status", "max_status", "met"),
    [
        (2.0, 2, True),
        (2.0, 3, True),  # the target is <= 3
        (2.0, 4, False),  # a mean within target hides one VM with 4 status writes
        (3.5, 4, False),
    ],
)
def test_status_write_target_is_checked_on_the_worst_vm(
    mean_status: float, max_status: int, met: bool
) -> None:
    targets = vm_start.targets({"test": _set(mean_status, max_status)})
    assert targets == {"test_status_writes_le_3_every_vm": met}


def test_a_failed_set_has_no_status_write_target() -> None:
    assert vm_start.targets({"test": {"error": "boom"}}) == {}


# --- bench/vrf.py: ratios and targets on the product row --------------------------------


def test_ratios_read_the_right_way_round() -> None:
    out = vrf.compare({"product": 2.0, "ip-batch": 0.5, "ip-per-object": 30.0})
    assert out["ratios"] == {
        "product_time_over_ip_batch_time": 4.0,
        "ip_per_object_time_over_product_time": 15.0,
    }


@pytest.mark.parametrize(
    ("product", "batch", "each", "faster_20x", "within_3x", "within_2x"),
    [
        (1.0, 1.0, 20.0, True, True, True),  # boundaries are inclusive
        (2.0, 1.0, 40.0, True, True, True),
        (2.5, 1.0, 40.0, False, True, False),
        (3.0, 1.0, 59.0, False, True, False),
        (3.1, 1.0, 100.0, True, False, False),
        (0.5, 1.0, 5.0, False, True, True),  # faster than ip -batch, not 20x ip per object
    ],
)
def test_targets_are_computed_on_the_product_time(
    product: float, batch: float, each: float, faster_20x: bool, within_3x: bool, within_2x: bool
) -> None:
    targets = vrf.compare({"product": product, "ip-batch": batch, "ip-per-object": each})["targets"]
    assert targets == {
        "issue4_product_at_least_20x_faster_than_ip_per_object": faster_20x,
        "issue4_product_within_3x_ip_batch_time": within_3x,
        "issue12_product_within_2x_ip_batch_time": within_2x,
    }


def test_table_column_is_row_time_over_product_time() -> None:
    back = vrf.ReadBack(vrfs_complete=2, routes=200, problems=[])
    text = vrf.table({"ip-per-object": (8.0, back), "product": (2.0, back)}, 2)
    rows = {line.split("  ")[0]: line.split() for line in text.splitlines()[1:]}
    assert rows["ip per object"][-1] == "4.00"
    assert rows["ip per object"][-2] == "25"  # 200 routes in 8 s
    assert rows["product: VRFRealizer.apply"][-1] == "1.00"


# --- bench/vrf.py: counting routes read back from the kernel -----------------------------

GW = "172.16.0.2"


def route(dst: str, **extra: Any) -> dict[str, Any]:
    return {"dst": dst, "gateway": GW, "dev": "eth0", "protocol": "107", "flags": []} | extra


def test_count_routes_counts_only_the_planned_kind() -> None:
    dumped = [
        route("10.1.0.1"),  # ip prints a /32 without its length
        route("10.1.0.2/32"),
        route("10.1.0.3", gateway="172.16.0.9"),  # another gateway
        route("10.1.0.4", protocol="static"),  # not installed as protocol 107
        route("10.1.0.5", type="blackhole", gateway=None),  # the wrong kind
        route("10.9.9.9"),  # not in the plan
    ]
    wanted = {f"10.1.0.{i}/32" for i in range(1, 6)}
    assert vrf.count_routes(dumped, table=None, gateway=GW, wanted=wanted) == 2


def test_count_routes_per_table_in_a_dump_of_all_tables() -> None:
    dumped = [route("10.1.0.1", table="1000"), route("10.1.0.1", table="1001")]
    wanted = {"10.1.0.1/32"}
    assert vrf.count_routes(dumped, table=1000, gateway=GW, wanted=wanted) == 1
    assert vrf.count_routes(dumped, table=1002, gateway=GW, wanted=wanted) == 0
