"""call_end events counted in batches (observe/prom_calls.py) add exactly what counting
them one by one adds: every series, every label, every bucket; hand-made events with
missing or non-numeric fields fall back to one by one without losing any."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from shoal.observe.events import Event, EventBus
from shoal.observe.prom_calls import BATCH, count_batch, count_one
from shoal.observe.prom_metrics import Metrics
from shoal.observe.prometheus import PrometheusExporter


def _exposition(m: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in m.collect():
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


_seconds = st.one_of(st.just(0.0), st.floats(0.0, 200.0, allow_nan=False))
_tokens = st.one_of(st.just(0), st.integers(0, 10**8))


@st.composite
def call_end(draw: st.DrawFn) -> Event:
    error = draw(st.sampled_from(["", "", "RateLimited", "QuotaExhausted", "BadRequest"]))
    data: dict[str, Any] = {
        "run_id": "r", "step": "s", "agent": draw(st.sampled_from(["a", "b", ""])),
        "call_id": "c1", "turn": None, "stream": draw(st.booleans()),
        "provider": draw(st.sampled_from(["openai", "anthropic"])),
        "served_model": "" if error else draw(st.sampled_from(["m-1", "m-2", ""])),
        "status": "error" if error else "ok", "error_type": error,
        "request_model": "m", "attempts": draw(st.integers(1, 5)),
        "duration_s": draw(_seconds), "ttft_s": draw(st.one_of(st.none(), _seconds)),
        "queue_s": draw(_seconds), "cost_usd": draw(st.floats(0, 1)),
        "wasted_cost_usd": draw(st.sampled_from([0.0, 0.0, 0.25])),
        "input_tokens": draw(_tokens), "output_tokens": draw(_tokens),
        "cached_input_tokens": draw(_tokens), "cache_write_tokens": draw(_tokens),
        "reasoning_tokens": draw(_tokens),
    }
    if draw(st.integers(0, 9)) == 0:  # a hand-made event: a field missing or None
        key = draw(st.sampled_from(sorted(data)))
        if draw(st.booleans()):
            del data[key]
        else:
            data[key] = None
    channel = draw(st.sampled_from(["ch1", "ch2", ""]))
    model = draw(st.sampled_from(["m", "n"]))
    return Event("call_end", 1.0, channel, model, data)


def _same(one: Metrics, batch: Metrics) -> None:
    a, b = _exposition(one), _exposition(batch)
    assert a.keys() == b.keys()
    for key, value in a.items():  # sums shared by several kinds add in another order
        assert b[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


@settings(max_examples=300, deadline=None)
@given(st.lists(call_end(), min_size=1, max_size=3 * BATCH))
def test_a_batch_counts_what_one_by_one_counts(events: list[Event]) -> None:
    one, batch = Metrics(), Metrics()
    for e in events:
        count_one(one, e)
    for i in range(0, len(events), BATCH):
        count_batch(batch, events[i:i + BATCH])
    _same(one, batch)


def test_one_kind_counts_exactly_and_every_series_is_there() -> None:
    bus = EventBus()
    exporter = PrometheusExporter(bus)
    exporter.subscribe()
    for i in range(BATCH * 2 + 5):  # two batches counted at call_start, five at the scrape
        bus.emit("call_start", model="m")
        bus.publish("call_end", {
            "agent": "a", "status": "ok", "provider": "openai", "served_model": "m-1",
            "error_type": "", "attempts": 1, "duration_s": 0.5, "ttft_s": 0.1,
            "queue_s": 0.002 * (i % 3), "cost_usd": 0.001, "wasted_cost_usd": 0.0,
            "input_tokens": 100, "output_tokens": 10, "cached_input_tokens": 0,
            "cache_write_tokens": 0, "reasoning_tokens": 3}, channel="ch", model="m")
    n = BATCH * 2 + 5
    got = {(s.name, frozenset(s.labels.items())): s.value
           for f in text_string_to_metric_families(exporter.text()) for s in f.samples}
    assert got[("shoal_model_calls_total", frozenset(
        {"model": "m", "agent": "a", "status": "ok"}.items()))] == n
    assert got[("shoal_tokens_total", frozenset(
        {"model": "m", "agent": "a", "type": "reasoning"}.items()))] == 3 * n
    assert ("shoal_tokens_total", frozenset(
        {"model": "m", "agent": "a", "type": "cached_input"}.items())) not in got
    assert got[("shoal_running", frozenset({"what": "call"}.items()))] == 0
    assert got[("shoal_channel_queue_wait_seconds_bucket", frozenset(
        {"channel": "ch", "le": "0.001"}.items()))] == len(range(0, n, 3))
    assert got[("shoal_model_time_to_first_token_seconds_count", frozenset(
        {"model": "m", "agent": "a"}.items()))] == n
