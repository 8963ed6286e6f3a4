"""The shared reconcile loop: one pass at a time per key, folded requests, retries,
resync of waiting keys. Passes are plain coroutines here; no API server involved."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio.client import ApiException

from kubevisor.controller.runtime import events, reconciling
from kubevisor.controller.runtime.reconciling import Key, Outcome

pytestmark = pytest.mark.unit

K: Key = ("ns", "vm")
DEADLINE = 5.0


class Passes:
    """A pass function that records its calls; each call waits for ``gate`` when set."""

    def __init__(self, *outcomes: Outcome | BaseException) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[Key] = []
        self.running = 0
        self.most_running = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self, key: Key) -> Outcome:
        self.calls.append(key)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.entered.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            result = self.outcomes.pop(0) if self.outcomes else Outcome.DONE
            if isinstance(result, BaseException):
                raise result
            return result
        finally:
            self.running -= 1


def _reconciler(passes: Passes, *, resync_seconds: float = 60.0) -> reconciling.Reconciler:
    return reconciling.Reconciler("Test", passes, resync_seconds=resync_seconds, backoff=0.0)


async def test_passes_over_one_key_never_overlap_and_queued_requests_fold() -> None:
    passes = Passes()
    passes.gate = asyncio.Event()
    r = _reconciler(passes)
    first = asyncio.create_task(r.reconcile(K))
    await asyncio.wait_for(passes.entered.wait(), DEADLINE)
    # While the first pass runs: one request queues, the rest fold into it.
    queued = [asyncio.create_task(r.reconcile(K)) for _ in range(3)]
    other = asyncio.create_task(r.reconcile(("ns", "other")))
    passes.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *queued, other), DEADLINE)
    assert sorted(passes.calls) == [("ns", "other"), K, K]
    assert passes.most_running == 2  # the two keys, never one key twice
    assert r._slots == {}  # nothing kept once nobody waits


@pytest.mark.parametrize(
    ("outcome", "waiting"),
    [(Outcome.WAIT, {K}), (Outcome.DONE, set()), (Outcome.GONE, set())],
)
async def test_outcome_decides_whether_the_resync_looks_again(
    outcome: Outcome, waiting: set[Key]
) -> None:
    r = _reconciler(Passes(Outcome.WAIT, outcome))
    await r.reconcile(K)
    assert r.waiting == {K}
    await r.reconcile(K)
    assert r.waiting == waiting


async def test_errors_are_retried_then_left_to_the_resync() -> None:
    passes = Passes(RuntimeError("one"), ApiException(status=409), Outcome.DONE)
    r = _reconciler(passes)
    await r.reconcile(K)
    assert len(passes.calls) == 3 and r.waiting == set()

    failing = Passes(*[RuntimeError("always")] * reconciling.RETRIES)
    r = _reconciler(failing)
    await r.reconcile(K)
    assert len(failing.calls) == reconciling.RETRIES and r.waiting == {K}


async def test_a_pass_takes_the_newest_watch_body_once_and_a_conflict_rereads() -> None:
    r = _reconciler(Passes())
    seen: list[dict[str, object] | None] = []
    results: list[Outcome | BaseException] = [ApiException(status=409), Outcome.DONE]

    async def once(key: Key) -> Outcome:
        seen.append(r.delivered(key))
        result = results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result

    r._once = once
    r.offer(K, {"v": 1})
    r.offer(K, {"v": 2})  # a newer event replaces the older body
    await r.reconcile(K)
    # the first attempt decided on the watch body; its write was refused (409), so the
    # retry got no body and reads the object from the API
    assert seen == [{"v": 2}, None]
    r.offer(K, {"v": 3})
    r.forget(K)  # deleted: nothing left for a later pass
    assert r.delivered(K) is None


async def test_a_deleted_object_is_not_retried() -> None:
    passes = Passes(ApiException(status=404))
    r = _reconciler(passes)
    r.waiting.add(K)
    await r.reconcile(K)
    assert len(passes.calls) == 1
    r.forget(K)
    assert r.waiting == set()


async def test_resync_passes_over_waiting_keys_until_done() -> None:
    passes = Passes(Outcome.WAIT, Outcome.WAIT, Outcome.DONE)
    r = _reconciler(passes, resync_seconds=0.01)
    await r.reconcile(K)
    loop = asyncio.create_task(r.resync())
    try:
        async with asyncio.timeout(DEADLINE):
            while len(passes.calls) < 3:
                passes.entered.clear()
                await passes.entered.wait()
            await asyncio.gather(*r._tasks)  # the third pass records its outcome
    finally:
        loop.cancel()
        await r.stop()
    assert passes.calls[:3] == [K, K, K] and r.waiting == set()


class FakeKube:
    """Stands in for the API client: records the Events it is asked to create."""

    def __init__(self) -> None:
        self.created: list[tuple[str, str, str]] = []

    async def create_event(
        self, obj: dict[str, object], *, kind: str, type_: str, reason: str, message: str
    ) -> None:
        if reason == "Fails":
            raise ApiException(status=500)
        self.created.append((kind, reason, message))


async def test_recorder_posts_in_order_and_survives_a_failed_post() -> None:
    recorder = events.Recorder()
    obj = {"metadata": {"name": "vm", "namespace": "ns"}}
    recorder.post(obj, kind="VirtualMachine", type_="Normal", reason="Early", message="logged")
    fake = FakeKube()
    recorder.start(fake)  # type: ignore[arg-type]
    for reason in ("Scheduled", "Fails", "Unschedulable"):
        recorder.post(obj, kind="VirtualMachine", type_="Normal", reason=reason, message="m")
    await recorder.stop()
    assert fake.created == [
        ("VirtualMachine", "Scheduled", "m"),
        ("VirtualMachine", "Unschedulable", "m"),
    ]


async def test_every_pass_is_counted_and_timed_by_kind_and_outcome() -> None:
    from prometheus_client import REGISTRY

    def count(outcome: str) -> float:
        labels = {"kind": "Counted", "outcome": outcome}
        return REGISTRY.get_sample_value("kubevisor_controller_reconciles_total", labels) or 0.0

    timed = "kubevisor_controller_reconcile_duration_seconds_count"
    before = {o: count(o) for o in ("done", "wait", "gone", "error")}
    timed_before = REGISTRY.get_sample_value(timed, {"kind": "Counted"}) or 0.0
    passes = Passes(RuntimeError("one"), Outcome.WAIT, ApiException(status=404), Outcome.DONE)
    r = reconciling.Reconciler("Counted", passes, resync_seconds=60.0, backoff=0.0)
    await r.reconcile(K)  # an error, retried: WAIT
    await r.reconcile(K)  # gone
    await r.reconcile(K)  # done
    assert {o: count(o) - before[o] for o in before} == {
        "done": 1,
        "wait": 1,
        "gone": 1,
        "error": 1,
    }
    assert (REGISTRY.get_sample_value(timed, {"kind": "Counted"}) or 0.0) == timed_before + 4
