"""bench/_profiling.py's summary of a py-spy raw profile, and _harness's peak RSS parse."""

from __future__ import annotations

import pytest

from . import load

pytestmark = pytest.mark.unit

prof = load("_profiling")
h = load("_harness")


def test_top_counts_each_frame_once_per_stack() -> None:
    raw = "\n".join(
        [
            "main (a.py:1);apply (r.py:5);fork (p.py:9) 6",
            "main (a.py:1);apply (r.py:5);apply (r.py:5) 2",  # recursion: counted once
            "main (a.py:1);idle (s.py:3) 2",
            "not a profile line",
        ]
    )
    got = dict((frame, pct) for pct, frame in prof.top(raw))
    assert got == {
        "main (a.py:1)": 100.0,
        "apply (r.py:5)": 80.0,
        "fork (p.py:9)": 60.0,
        "idle (s.py:3)": 20.0,
    }
    assert [f for _, f in prof.top(raw, n=1)] == ["main (a.py:1)"]
    assert prof.top("") == []


@pytest.mark.parametrize(
    ("text", "mb"),
    [
        ("Name:\tpython\nVmHWM:\t  153600 kB\nVmRSS:\t 1024 kB\n", 150.0),
        ("Name:\tkthread\n", None),
    ],
)
def test_vm_hwm_mb(text: str, mb: float | None) -> None:
    assert h.vm_hwm_mb(text) == mb
