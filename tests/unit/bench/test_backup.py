"""bench/backup.py's pure parts: the guest tick gap and the agent's timing line."""

from __future__ import annotations

import pytest

from . import load

pytestmark = pytest.mark.unit

backup = load("backup")


@pytest.mark.parametrize(
    ("arrivals", "gap"),
    [([], None), ([1.0], None), ([1.0, 2.0, 3.0], 1000.0), ([1.0, 2.0, 3.35, 4.35], 1350.0)],
)
def test_max_gap_ms(arrivals: list[float], gap: float | None) -> None:
    got = backup.max_gap_ms(arrivals)
    assert got == pytest.approx(gap) if gap is not None else got is None


def test_agent_timings_of_one_backup() -> None:
    log = "\n".join(
        [
            "INFO default/bb-full-0: backup job ended; timings job=612ms",
            "INFO default/bb-full-0: backup complete in /x; timings copy=700ms checksum=210ms"
            " commit=350ms",
            "INFO default/bb-full-1: backup job ended; timings job=999ms",
        ]
    )
    assert backup.agent_timings(log, "bb-full-0") == {
        "job": 612.0, "copy": 700.0, "checksum": 210.0, "commit": 350.0,
    }  # fmt: skip
