"""EventBus: delivery, order, unsubscribe, isolation of failing subscribers."""

from __future__ import annotations

import logging

import pytest

from shoal.clock import VirtualClock
from shoal.observe.events import KINDS, Event, EventBus


async def test_events_reach_subscribers_in_order_with_the_clock_time() -> None:
    clock = VirtualClock()
    bus = EventBus(clock)
    first: list[Event] = []
    second: list[Event] = []
    bus.subscribe(first.append)
    bus.subscribe(second.append)
    bus.emit("admit", channel="ds", model="deepseek-chat", tokens=12)
    await clock.advance(2.5)
    bus.emit("retry", channel="ds", delay_s=1.0)
    assert first == second
    assert [(e.kind, e.at, e.channel) for e in first] == [
        ("admit", 0.0, "ds"),
        ("retry", 2.5, "ds"),
    ]
    assert first[0].model == "deepseek-chat"
    assert dict(first[0].data) == {"tokens": 12}


def test_publish_takes_keys_that_are_not_identifiers() -> None:
    bus = EventBus(VirtualClock())
    seen: list[Event] = []
    bus.subscribe(seen.append)
    bus.publish("breaker", {"from": "closed", "to": "open"}, channel="glm")
    assert seen[0].data["from"] == "closed"
    assert seen[0].channel == "glm"


def test_event_data_is_the_events_own_copy() -> None:
    """``publish`` copies the caller's mapping: changing it afterwards (a caller reusing
    its dict) leaves the delivered event as it was."""
    bus = EventBus(VirtualClock())
    seen: list[Event] = []
    bus.subscribe(seen.append)
    fields: dict[str, object] = {"from": "closed", "to": "open"}
    bus.publish("breaker", fields, channel="c")
    fields["to"] = "half_open"
    bus.publish("breaker", fields, channel="c")
    assert [e.data["to"] for e in seen] == ["open", "half_open"]
    assert seen[0].data is not seen[1].data


def active(bus: EventBus) -> bool:
    """Read through a call, so the type checker does not pin the flag between steps."""
    return bus.active


def test_unsubscribe_stops_delivery_and_is_idempotent() -> None:
    bus = EventBus(VirtualClock())
    seen: list[Event] = []
    unsubscribe = bus.subscribe(seen.append)
    assert active(bus)
    bus.emit("settle")
    unsubscribe()
    unsubscribe()
    assert not active(bus)
    bus.emit("settle")
    assert len(seen) == 1


def test_emit_without_subscribers_builds_nothing() -> None:
    class Exploding(VirtualClock):
        def now(self) -> float:
            raise AssertionError("no subscriber: the clock must not even be read")

    bus = EventBus(Exploding())
    bus.emit("admit", tokens=1)  # does not raise


def test_a_failing_subscriber_is_logged_and_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus(VirtualClock())
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    bus.subscribe(seen.append)
    with caplog.at_level(logging.ERROR, logger="shoal.events"):
        bus.emit("failover", channel="a")
    assert len(seen) == 1
    assert "subscriber" in caplog.text


def test_the_documented_kinds() -> None:
    assert {"admit", "wait", "retry", "failover", "breaker", "limit_change", "settle",
            "run_start", "run_end", "step_start", "step_end", "agent_start", "agent_end",
            "tool_start", "tool_end", "call_start", "call_end", "guard", "budget",
            "journal"} == KINDS
