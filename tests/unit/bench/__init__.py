"""Tests of the benchmarks' own arithmetic: the published numbers come from it."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[3] / "bench"


def load(name: str) -> ModuleType:
    """A script of ``bench/`` by file (they are scripts, not a package; ``vrf`` would also
    clash with the ``tests/unit/vrf`` test package), importing its ``_harness`` the way
    the script does."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    if name == "_harness":
        return importlib.import_module(name)  # the very module the scripts import
    if f"kvbench_{name}" in sys.modules:
        return sys.modules[f"kvbench_{name}"]
    spec = importlib.util.spec_from_file_location(f"kvbench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
