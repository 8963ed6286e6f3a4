"""The one Event body both sides post (api/events)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from kubevisor.api import events

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, tzinfo=UTC)
OBJ = {"metadata": {"name": "vm1", "namespace": "default", "uid": "u1"}}


def test_controller_event_names_its_object_and_component() -> None:
    body = events.body(
        OBJ,
        kind="VirtualMachine",
        type_="Normal",
        reason="Scheduled",
        message="m",
        component="kubevisor-controller",
        now=NOW,
    )
    assert body["involvedObject"] == {
        "apiVersion": "kubevisor.io/v1alpha1",
        "kind": "VirtualMachine",
        "name": "vm1",
        "namespace": "default",
        "uid": "u1",
    }
    assert body["metadata"]["name"].startswith("vm1.")
    assert body["source"] == {"component": "kubevisor-controller"}
    assert "reportingInstance" not in body


def test_agent_event_carries_its_node_and_a_capped_message() -> None:
    body = events.body(
        OBJ,
        kind="VirtualMachine",
        type_="Warning",
        reason="HypervisorRefused",
        message="x" * 5000,
        component="kubevisor-agent",
        now=NOW,
        host="node-1",
    )
    assert body["source"] == {"component": "kubevisor-agent", "host": "node-1"}
    assert body["reportingInstance"] == "node-1"
    assert len(body["message"]) == events.MAX_MESSAGE


def _body(message: str = "m", uid: str = "u1") -> dict[str, object]:
    obj = {"metadata": {"name": "vm1", "namespace": "default", "uid": uid}}
    return events.body(
        obj,
        kind="VirtualMachine",
        type_="Warning",
        reason="ImageNotFound",
        message=message,
        component="kubevisor-agent",
        now=NOW,
        host="node-1",
    )


def test_a_repeat_bumps_the_first_events_count() -> None:
    agg = events.Aggregator()
    first = _body()
    assert agg.repeat(first, NOW) is None
    for n in (2, 3):
        seen = agg.repeat(_body(), NOW + timedelta(seconds=n))
        assert seen is not None
        assert (seen.name, seen.namespace, seen.count) == (first["metadata"]["name"], "default", n)  # type: ignore[index]
        assert events.bump(seen, NOW) == {"count": n, "lastTimestamp": NOW}


@pytest.mark.parametrize(
    "other",
    [
        {"message": "another message"},
        {"uid": "u2"},  # another object of the same name (recreated)
    ],
)
def test_a_different_event_is_a_new_series(other: dict[str, str]) -> None:
    agg = events.Aggregator()
    assert agg.repeat(_body(), NOW) is None
    assert agg.repeat(_body(**other), NOW) is None


def test_a_repeat_after_the_window_or_forgotten_is_posted_anew() -> None:
    agg = events.Aggregator(window=timedelta(minutes=10))
    assert agg.repeat(_body(), NOW) is None
    assert agg.repeat(_body(), NOW + timedelta(minutes=11)) is None
    agg.forget(_body())
    assert agg.repeat(_body(), NOW + timedelta(minutes=12)) is None


def test_the_oldest_series_is_forgotten_past_the_size() -> None:
    agg = events.Aggregator(size=2)
    for m in ("a", "b", "c"):
        agg.repeat(_body(m), NOW)
    assert agg.repeat(_body("a"), NOW) is None  # forgotten
    assert agg.repeat(_body("c"), NOW) is not None


def test_the_controller_names_its_instance() -> None:
    body = events.body(
        OBJ, kind="VirtualMachine", type_="Normal", reason="Scheduled", message="m",
        component="kubevisor-controller", now=NOW, instance="controller-pod-1",
    )  # fmt: skip
    assert body["reportingInstance"] == "controller-pod-1"
    assert body["source"] == {"component": "kubevisor-controller"}


class RecordingEventsAPI:
    """A stand-in for CoreV1Api's two Event calls, recording them (the real API server
    path is tests/integration/test_events_flow.py); ``expired`` names Events it answers
    "gone" for."""

    def __init__(self, expired: frozenset[str] = frozenset()) -> None:
        self.calls: list[tuple[str, str, dict[str, object]]] = []
        self.expired = expired

    async def create_namespaced_event(self, namespace: str, body: dict[str, object]) -> None:
        self.calls.append(("create", namespace, body))

    async def patch_namespaced_event(
        self, name: str, namespace: str, body: dict[str, object], **kwargs: object
    ) -> None:
        if name in self.expired:
            raise LookupError(name)
        assert kwargs == {"_content_type": events.MERGE_PATCH}
        self.calls.append(("patch", name, body))


def test_post_creates_then_bumps_and_posts_anew_when_expired() -> None:
    first = _body()
    name = first["metadata"]["name"]  # type: ignore[index]
    api, agg = RecordingEventsAPI(), events.Aggregator()

    def post(body: dict[str, object], api: RecordingEventsAPI) -> str:
        def gone(exc: BaseException) -> bool:
            return isinstance(exc, LookupError)

        return asyncio.run(events.post(api, agg, body, NOW, gone=gone))

    assert post(first, api) == "create"
    assert post(_body(), api) == "patch"
    assert api.calls[1] == ("patch", name, {"count": 2, "lastTimestamp": NOW})
    expired = RecordingEventsAPI(expired=frozenset({name}))
    again = _body()
    assert post(again, expired) == "create"
    assert expired.calls == [("create", "default", again)]
    assert post(_body(), expired) == "patch"  # the new one is the series now
    assert expired.calls[1][1] == again["metadata"]["name"]  # type: ignore[index]
