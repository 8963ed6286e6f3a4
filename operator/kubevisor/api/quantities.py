"""Kubernetes resource quantities ("256Mi", "1Gi", "2", "500m", "1e3") as exact numbers.

Pure functions: the agent sizes domains in bytes and the controller compares capacity in
bytes and millicores; both must round the same way, so the rounding lives here.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Final

#: The grammar of ``resource.Quantity`` (k8s.io/apimachinery), unsigned. Used as the
#: OpenAPI ``pattern`` of quantity fields so bad strings are rejected by the API server.
PATTERN: Final = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

_SIGNED = re.compile(r"^[+-]?" + PATTERN[1:])
_NUMBER = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$")

_SUFFIXES: Final[dict[str, Decimal]] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}


class QuantityError(ValueError):
    """A string that is not a Kubernetes quantity; the message quotes it."""


def parse(quantity: str | int) -> Decimal:
    """Return the exact value of a quantity (``"1Ki"`` -> 1024, ``"500m"`` -> 0.5).

    Integers are accepted because YAML users write ``cpu: 2``.
    """
    if isinstance(quantity, bool):
        raise QuantityError(f"not a quantity: {quantity!r}")
    if isinstance(quantity, int):
        return Decimal(quantity)
    text = quantity.strip()
    if not _SIGNED.match(text):
        raise QuantityError(f"not a quantity: {quantity!r}")
    match = _NUMBER.match(text)
    assert match is not None  # the grammar above guarantees a leading number
    number, suffix = match.group(1), match.group(2)
    try:
        value = Decimal(number)
        if suffix in _SUFFIXES:
            return value * _SUFFIXES[suffix]
        return value * (Decimal(10) ** Decimal(suffix[1:]))
    except InvalidOperation as exc:  # pragma: no cover - grammar rules this out
        raise QuantityError(f"not a quantity: {quantity!r}") from exc


def to_bytes(quantity: str | int) -> int:
    """Bytes for a memory/disk quantity, rounded up (a fraction of a byte is a byte)."""
    return math.ceil(parse(quantity))


def to_millicores(quantity: str | int) -> int:
    """Millicores for a CPU quantity (``"2"`` -> 2000, ``"500m"`` -> 500), rounded up."""
    return math.ceil(parse(quantity) * 1000)


def to_mebibytes(quantity: str | int) -> int:
    """MiB for a memory quantity, rounded up: the unit libvirt domain XML is written in."""
    return math.ceil(parse(quantity) / _SUFFIXES["Mi"])


def format_bytes(n: int) -> str:
    """Shortest exact binary-suffixed form of a byte count (1073741824 -> ``"1Gi"``)."""
    if n < 0:
        raise QuantityError(f"negative byte count: {n}")
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = int(_SUFFIXES[suffix])
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def is_quantity(text: str) -> bool:
    """True when ``text`` parses as a (signed) quantity."""
    return bool(_SIGNED.match(text.strip()))
