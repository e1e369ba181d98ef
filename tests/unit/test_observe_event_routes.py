"""Subscribers that name a handler per event kind (``subscribe(kinds=...)``): each event
reaches, in subscription order, the plain callbacks and the handler its kind names; a
kind mapped to None reaches nobody in that subscription; unsubscribing and subscribing
again change what later events reach; ``subscribe_all`` takes the same routes."""

from __future__ import annotations

import pytest

from shoal.clock import VirtualClock
from shoal.observe.events import Event, EventBus, subscribe_all


def active(bus: EventBus) -> bool:
    return bus.active  # read through a call: mypy would narrow the property


def test_each_kind_reaches_its_handler_and_the_rest_the_callback_in_order() -> None:
    bus = EventBus(VirtualClock())
    seen: list[tuple[str, str]] = []
    bus.subscribe(lambda e: seen.append(("first", e.kind)))
    bus.subscribe(lambda e: seen.append(("rest", e.kind)),
                  kinds={"retry": lambda e: seen.append(("retry", e.kind)), "settle": None})
    bus.subscribe(lambda e: seen.append(("last", e.kind)))
    for kind in ("retry", "settle", "wait"):
        bus.emit(kind, channel="c")
    assert seen == [("first", "retry"), ("retry", "retry"), ("last", "retry"),
                    ("first", "settle"), ("last", "settle"),
                    ("first", "wait"), ("rest", "wait"), ("last", "wait")]


def test_kinds_alone_deliver_only_the_named_kinds() -> None:
    bus = EventBus(VirtualClock())
    got: list[Event] = []
    unsubscribe = bus.subscribe(kinds={"call_end": got.append})
    assert active(bus)
    bus.emit("call_start", call_id="c1")
    bus.publish_clean("call_end", {"call_id": "c1"})
    assert [(e.kind, e.data["call_id"]) for e in got] == [("call_end", "c1")]
    unsubscribe()
    unsubscribe()
    assert not active(bus)
    bus.publish_clean("call_end", {"call_id": "c2"})
    assert len(got) == 1


def test_routes_follow_subscriptions_made_after_an_event_of_that_kind() -> None:
    bus = EventBus(VirtualClock())
    first: list[str] = []
    second: list[str] = []
    bus.subscribe(kinds={"retry": lambda e: first.append(e.kind)})
    bus.emit("retry")
    drop = bus.subscribe(lambda e: second.append(e.kind))
    bus.emit("retry")
    drop()
    bus.emit("retry")
    assert first == ["retry"] * 3
    assert second == ["retry"]


def test_subscribe_all_takes_routes_for_buses_made_before_and_after() -> None:
    before = EventBus(VirtualClock())
    got: list[str] = []
    unsubscribe = subscribe_all(kinds={"failover": lambda e: got.append(e.channel)})
    try:
        after = EventBus(VirtualClock())
        for bus, name in ((before, "a"), (after, "b")):
            assert active(bus)
            bus.emit("failover", channel=name)
            bus.emit("retry", channel=name)
        assert got == ["a", "b"]
    finally:
        unsubscribe()
    assert not active(before) and not active(after)


def test_a_subscription_needs_a_callback_or_kinds() -> None:
    with pytest.raises(TypeError):
        EventBus(VirtualClock()).subscribe()
    with pytest.raises(TypeError):
        subscribe_all()
