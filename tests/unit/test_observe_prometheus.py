"""PrometheusExporter: events on a bus become the documented series with the right values;
channel gauges come from a live Router; served over HTTP and pushed to a Pushgateway."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from shoal.clock import VirtualClock
from shoal.config import Config
from shoal.errors import ConfigError
from shoal.observe.events import EventBus
from shoal.observe.prometheus import PrometheusExporter
from shoal.traffic.router import Router

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SECRET = "sk-live-0123456789abcdefSECRET"
TOKENS = {"input_tokens": 120, "output_tokens": 30, "cached_input_tokens": 20,
          "cache_write_tokens": 0, "reasoning_tokens": 5}


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(got: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in got, f"no series {name}{labels}; have {sorted(k[0] for k in got)}"
    return got[key]


def call_end(bus: EventBus, *, agent: str = "writer", model: str = "m", cost: float = 0.002,
             error: str = "", channel: str = "ch1", **extra: object) -> None:
    bus.emit("call_start", model=model, run_id="r1", step=agent, agent=agent, stream=False)
    fields: dict[str, object] = {
        "run_id": "r1", "step": agent, "agent": agent, "stream": True, "provider": "openai",
        "served_model": "m-2026", "status": "error" if error else "ok", "error_type": error,
        "attempts": 1, "duration_s": 0.3, "ttft_s": 0.05, "queue_s": 0.0, "cost_usd": cost,
        "wasted_cost_usd": 0.0, **TOKENS, **extra}
    bus.publish("call_end", fields, channel=channel, model=model)


@pytest.fixture
def bus() -> EventBus:
    return EventBus(VirtualClock())


def test_call_events_count_calls_tokens_by_type_cost_and_latency(bus: EventBus) -> None:
    exporter = PrometheusExporter(bus)
    exporter.subscribe()
    call_end(bus)
    call_end(bus, cost=0.003)
    call_end(bus, agent="critic", error="BadRequest")
    got = samples(exporter.text())
    assert value(got, "shoal_model_calls_total", model="m", agent="writer", status="ok") == 2
    assert value(got, "shoal_model_calls_total", model="m", agent="critic",
                 status="error") == 1
    for kind, key in (("input", "input_tokens"), ("output", "output_tokens"),
                      ("cached_input", "cached_input_tokens"), ("reasoning", "reasoning_tokens")):
        assert value(got, "shoal_tokens_total", model="m", agent="writer",
                     type=kind) == 2 * TOKENS[key]
    assert ("shoal_tokens_total", frozenset({("model", "m"), ("agent", "writer"),
                                             ("type", "cache_write")})) not in got
    assert value(got, "shoal_cost_usd_total", model="m", agent="writer") == pytest.approx(0.005)
    assert value(got, "shoal_model_call_duration_seconds_count", model="m", agent="writer") == 2
    assert value(got, "shoal_model_time_to_first_token_seconds_sum", model="m",
                 agent="writer") == pytest.approx(0.1)
    assert value(got, "shoal_channel_requests_total", channel="ch1", outcome="ok") == 2
    assert value(got, "shoal_channel_requests_total", channel="ch1", outcome="BadRequest") == 1
    assert value(got, "shoal_running", what="call") == 0


def test_genai_semantic_convention_histograms(bus: EventBus) -> None:
    exporter = PrometheusExporter(bus)
    exporter.subscribe()
    call_end(bus)
    call_end(bus, error="ProviderTimeout")
    got = samples(exporter.text())
    common = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai",
              "gen_ai_request_model": "m", "gen_ai_response_model": "m-2026"}
    assert value(got, "gen_ai_client_token_usage_sum", **common,
                 gen_ai_token_type="input") == 120
    assert value(got, "gen_ai_client_token_usage_sum", **common,
                 gen_ai_token_type="output") == 30
    assert value(got, "gen_ai_client_token_usage_count", **common,
                 gen_ai_token_type="input") == 1  # a failed call used no tokens
    assert value(got, "gen_ai_client_token_usage_bucket", **common, gen_ai_token_type="input",
                 le="256.0") == 1
    assert value(got, "gen_ai_client_operation_duration_seconds_count", **common,
                 error_type="") == 1
    assert value(got, "gen_ai_client_operation_duration_seconds_count", **common,
                 error_type="ProviderTimeout") == 1


def test_retries_failovers_429s_quota_and_breaker(bus: EventBus) -> None:
    exporter = PrometheusExporter(bus)
    exporter.subscribe()
    bus.emit("retry", channel="glm", model="m", error="RateLimited", delay_s=1.0, attempt=1)
    bus.emit("retry", channel="glm", model="m", error="RateLimited", delay_s=2.0, attempt=2)
    bus.emit("failover", channel="glm", model="m", error="QuotaExhausted")
    bus.emit("wait", channel="glm", tokens=10, in_flight=3, queued=4)
    bus.emit("call_end", channel="glm", model="m", status="ok", queue_s=0.5)
    bus.publish("breaker", {"from": "closed", "to": "open", "error": "ProviderUnavailable"},
                channel="glm")
    bus.publish("limit_change", {"from": 4, "to": 2, "reason": "rate_limited"}, channel="glm")
    got = samples(exporter.text())
    assert value(got, "shoal_channel_rate_limited_total", channel="glm") == 2
    assert value(got, "shoal_channel_quota_errors_total", channel="glm") == 1
    assert value(got, "shoal_channel_retries_total", channel="glm", error="RateLimited") == 2
    assert value(got, "shoal_channel_failovers_total", channel="glm",
                 error="QuotaExhausted") == 1
    assert value(got, "shoal_channel_requests_total", channel="glm", outcome="RateLimited") == 2
    assert value(got, "shoal_channel_waits_total", channel="glm", reason="capacity") == 1
    assert value(got, "shoal_channel_queue_wait_seconds_sum", channel="glm") == 0.5
    assert value(got, "shoal_channel_breaker_state", channel="glm") == 2
    assert value(got, "shoal_channel_breaker_transitions_total", channel="glm", to="open") == 1
    assert value(got, "shoal_channel_limit", channel="glm") == 2
    assert value(got, "shoal_channel_queue_depth", channel="glm") == 4


async def test_channel_gauges_come_from_an_attached_router() -> None:
    cfg = Config.from_dict({
        "channels": {"capped": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1",
                                "api_key": "sk-test", "provider": "openai",
                                "max_concurrency": 3}},
        "models": {"m": {"channels": ["capped"]}}})
    async with Router(cfg) as router:
        router.lane("capped")
        permit = await router.lane("capped").limiter.acquire(1)
        exporter = PrometheusExporter(router.events, router=router)
        got = samples(exporter.text())
        permit.release()
    assert value(got, "shoal_channel_in_flight", channel="capped") == 1
    assert value(got, "shoal_channel_limit", channel="capped") == 3
    assert value(got, "shoal_channel_queue_depth", channel="capped") == 0
    assert value(got, "shoal_channel_breaker_state", channel="capped") == 0


def _step(bus: EventBus, kind: str, run_id: str, step: str, status: str = "") -> None:
    bus.emit(kind, run_id=run_id, step=step, agent=step, status=status, error="",
             duration_s=1.0, cost_usd=0.0)


def test_steps_by_status_per_run_and_only_the_last_runs_kept(bus: EventBus) -> None:
    exporter = PrometheusExporter(bus, keep_runs=1)
    exporter.subscribe()
    for run in ("a", "b"):
        bus.emit("run_start", run_id=run, flow="f")
        _step(bus, "step_start", run, "s1")
        _step(bus, "step_start", run, "s2")
        _step(bus, "step_end", run, "s1", "succeeded")
        got = samples(exporter.text())
        assert value(got, "shoal_run_steps", run_id=run, status="running") == 1
        assert value(got, "shoal_run_steps", run_id=run, status="succeeded") == 1
        _step(bus, "step_end", run, "s2", "failed")
        _step(bus, "step_end", run, "s3", "replayed")  # a replayed step never started
        bus.emit("run_end", run_id=run, flow="f", status="failed", error="", duration_s=2.0,
                 cost_usd=0.0)
    got = samples(exporter.text())
    assert value(got, "shoal_run_steps", run_id="b", status="running") == 0
    assert value(got, "shoal_run_steps", run_id="b", status="replayed") == 1
    assert not any(dict(labels).get("run_id") == "a" for _, labels in got)
    assert value(got, "shoal_steps_total", status="succeeded") == 2
    assert value(got, "shoal_steps_total", status="failed") == 2
    assert value(got, "shoal_runs_total", flow="f", status="failed") == 2
    assert value(got, "shoal_running", what="step") == 0


def test_agents_tools_guards_budget_and_journal(bus: EventBus) -> None:
    exporter = PrometheusExporter(bus)
    exporter.subscribe()
    bus.emit("agent_start", run_id="r", step="s", agent="a", model="m")
    bus.emit("tool_start", run_id="r", step="s", agent="a", tool="search", call_id="c1")
    bus.emit("tool_end", run_id="r", step="s", agent="a", tool="search", call_id="c1",
             status="ok", error="", duration_s=0.2)
    bus.emit("agent_end", run_id="r", step="s", agent="a", model="m", turns=3, status="ok",
             error="", duration_s=1.0, cost_usd=0.0)
    bus.emit("guard", run_id="r", step="s", agent="a", guard="max_turns", decision="trip",
             detail="50 turns")
    bus.emit("budget", run_id="r", step="s", agent="a", decision="refuse", amount_usd=1.0,
             tokens=10)
    bus.emit("journal", run_id="r", step="s", what="turn", turn=1)
    got = samples(exporter.text())
    assert value(got, "shoal_tool_calls_total", agent="a", tool="search", status="ok") == 1
    assert value(got, "shoal_tool_duration_seconds_sum", tool="search") == pytest.approx(0.2)
    assert value(got, "shoal_agent_invocations_total", agent="a", status="ok") == 1
    assert value(got, "shoal_agent_turns_sum", agent="a") == 3
    assert value(got, "shoal_guard_decisions_total", guard="max_turns", decision="trip") == 1
    assert value(got, "shoal_budget_decisions_total", decision="refuse") == 1
    assert value(got, "shoal_journal_writes_total", what="turn") == 1
    assert value(got, "shoal_running", what="agent") == 0


def test_no_error_text_prompt_or_key_reaches_the_metrics(bus: EventBus) -> None:
    exporter = PrometheusExporter(bus)
    exporter.subscribe()
    leak = f"Authorization: Bearer {SECRET} for the prompt 'tell me a secret'"
    call_end(bus, error="AuthError")
    bus.emit("step_end", run_id="r", step="s", agent="a", status="failed", error=leak,
             duration_s=1.0, cost_usd=0.0)
    bus.emit("tool_end", run_id="r", step="s", agent="a", tool="t", call_id="c",
             status="error", error=leak, duration_s=0.1)
    bus.emit("guard", run_id="r", step="s", agent="a", guard="loop", decision="trip",
             detail=leak)
    text = exporter.text()
    assert SECRET not in text and "tell me" not in text and "Bearer" not in text


def test_unsubscribed_exporter_counts_nothing_and_subscribe_is_idempotent(
        bus: EventBus) -> None:
    exporter = PrometheusExporter(bus)
    exporter.subscribe()
    exporter.subscribe()
    call_end(bus)
    exporter.unsubscribe()
    assert not bus.active
    call_end(bus)
    got = samples(exporter.text())
    assert value(got, "shoal_model_calls_total", model="m", agent="writer", status="ok") == 1


def test_two_exporters_in_one_process_do_not_collide(bus: EventBus) -> None:
    first, second = PrometheusExporter(bus), PrometheusExporter(bus)
    second.subscribe()
    call_end(bus)
    assert "shoal_tokens_total{" not in first.text()
    assert "shoal_tokens_total{" in second.text()


async def test_serve_answers_scrapes_over_http_until_closed(bus: EventBus) -> None:
    exporter = PrometheusExporter(bus)
    exporter.subscribe()
    call_end(bus)
    port = exporter.serve(0)
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            body = await resp.text()
        assert value(samples(body), "shoal_tokens_total", model="m", agent="writer",
                     type="output") == 30
        with pytest.raises(ConfigError, match="metrics-port"):
            PrometheusExporter(bus).serve(port)  # taken: a clear error, not a traceback
    finally:
        exporter.close()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"http://127.0.0.1:{port}/metrics")


async def test_push_sends_the_metrics_to_a_pushgateway(bus: EventBus) -> None:
    received: list[tuple[str, str, bytes]] = []

    async def accept(request: web.Request) -> web.Response:
        received.append((request.method, request.path, await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_route("*", "/metrics/{tail:.*}", accept)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        exporter = PrometheusExporter(bus)
        exporter.subscribe()
        call_end(bus)
        await asyncio.to_thread(exporter.push, f"http://127.0.0.1:{port}", "nightly",
                                grouping_key={"instance": "box1"})
    finally:
        await runner.cleanup()
    [(method, path, body)] = received
    assert method == "PUT" and path == "/metrics/job/nightly/instance/box1"
    assert b"shoal_cost_usd_total" in body


def test_push_to_nowhere_says_which_gateway(bus: EventBus) -> None:
    with pytest.raises(ConfigError, match=r"Pushgateway at http://127\.0\.0\.1:9"):
        PrometheusExporter(bus).push("http://127.0.0.1:9", "job", timeout_s=2)



def test_histogram_buckets_are_upper_inclusive_and_count_matches_inf(bus: EventBus) -> None:
    exporter = PrometheusExporter(bus)
    exporter.subscribe()
    for waited in (0.0, 0.01, 0.010001, 100.0):
        bus.emit("call_end", channel="c", model="m", status="ok", queue_s=waited)
    got = samples(exporter.text())
    assert value(got, "shoal_channel_queue_wait_seconds_bucket", channel="c", le="0.01") == 2
    assert value(got, "shoal_channel_queue_wait_seconds_bucket", channel="c", le="0.05") == 3
    assert value(got, "shoal_channel_queue_wait_seconds_bucket", channel="c", le="60.0") == 3
    assert value(got, "shoal_channel_queue_wait_seconds_bucket", channel="c", le="+Inf") == 4
    assert value(got, "shoal_channel_queue_wait_seconds_count", channel="c") == 4
    assert value(got, "shoal_channel_queue_wait_seconds_sum", channel="c") == pytest.approx(
        100.020001)


def test_scrapes_from_another_thread_while_events_arrive(bus: EventBus) -> None:
    import threading

    exporter = PrometheusExporter(bus)
    exporter.subscribe()
    errors: list[BaseException] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            try:
                samples(exporter.text())
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)
                return

    thread = threading.Thread(target=scrape)
    thread.start()
    try:
        for i in range(3000):  # new label values keep growing the dicts under the scraper
            call_end(bus, agent=f"agent{i % 300}", channel=f"ch{i % 7}")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert errors == []
    got = samples(exporter.text())
    assert sum(v for (name, _), v in got.items() if name == "shoal_model_calls_total") == 3000
