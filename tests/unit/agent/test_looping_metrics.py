"""The agent's work loop counts and times every pass by kind and outcome."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from kubevisor.agent.runtime import looping
from kubevisor.agent.runtime.informing import Key

pytestmark = pytest.mark.unit


def _count(kind: str, outcome: str) -> float:
    labels = {"kind": kind, "outcome": outcome}
    return REGISTRY.get_sample_value("kubevisor_agent_reconciles_total", labels) or 0.0


async def test_passes_are_counted_by_kind_and_outcome() -> None:
    async def handler(key: Key) -> None:
        if key[1] == "bad":
            raise RuntimeError("refused")

    loop = looping.WorkLoop(handler, workers=1, kind="counted")
    done0, error0 = _count("counted", "done"), _count("counted", "error")
    task = asyncio.create_task(loop.run())
    try:
        loop.enqueue(("ns", "good"))
        loop.enqueue(("ns", "bad"))
        deadline = asyncio.get_running_loop().time() + 5
        while _count("counted", "error") == error0 or _count("counted", "done") == done0:
            assert asyncio.get_running_loop().time() < deadline, "passes not counted"
            await asyncio.sleep(0.01)  # polling against a deadline
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert _count("counted", "done") == done0 + 1
    assert _count("counted", "error") == error0 + 1


def test_the_kind_defaults_to_the_handlers_package() -> None:
    from kubevisor.agent.vms import realizing

    assert looping._package_of(realizing.Agent._reconcile) == "vms"
    assert looping._package_of(lambda key: None) == "work"  # type: ignore[arg-type,return-value]
