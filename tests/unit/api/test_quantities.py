"""Quantity parsing: the controller and agent must round exactly the same way."""

from __future__ import annotations

from decimal import Decimal

import pytest

from kubevisor.api import quantities

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("256Mi", Decimal(256 * 2**20)),
        ("1Gi", Decimal(2**30)),
        ("1Ki", Decimal(1024)),
        ("2", Decimal(2)),
        ("500m", Decimal("0.5")),
        ("1k", Decimal(1000)),
        ("1M", Decimal(10**6)),
        ("1e3", Decimal(1000)),
        ("1.5Gi", Decimal(3 * 2**29)),
        (".5", Decimal("0.5")),
        ("100n", Decimal("1e-7")),
        ("0", Decimal(0)),
        (7, Decimal(7)),
    ],
)
def test_parse(text: str | int, value: Decimal) -> None:
    assert quantities.parse(text) == value


@pytest.mark.parametrize("text", ["", "Mi", "1Mb", "1 Gi", "abc", "1.2.3", "--1", "1ki", "1e"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(quantities.QuantityError):
        quantities.parse(text)


def test_parse_rejects_bool() -> None:
    with pytest.raises(quantities.QuantityError):
        quantities.parse(True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("256Mi", 268435456), ("1Gi", 1073741824), ("1k", 1000), ("500m", 1), ("1", 1)],
)
def test_to_bytes_rounds_up(text: str, expected: int) -> None:
    assert quantities.to_bytes(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2", 2000), ("500m", 500), ("0.1", 100), ("1u", 1), ("1.5", 1500)],
)
def test_to_millicores(text: str, expected: int) -> None:
    assert quantities.to_millicores(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("256Mi", 256), ("1Gi", 1024), ("1M", 1), ("1", 1)])
def test_to_mebibytes_rounds_up(text: str, expected: int) -> None:
    assert quantities.to_mebibytes(text) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0"),
        (1, "1"),
        (1024, "1Ki"),
        (268435456, "256Mi"),
        (1536 * 2**20, "1536Mi"),
        (2**30, "1Gi"),
        (1000, "1000"),
    ],
)
def test_format_bytes_round_trips(n: int, expected: str) -> None:
    assert quantities.format_bytes(n) == expected
    assert quantities.to_bytes(expected) == n


@pytest.mark.parametrize(("text", "ok"), [("-1", True), ("+5Mi", True), ("x", False)])
def test_is_quantity(text: str, ok: bool) -> None:
    assert quantities.is_quantity(text) is ok
