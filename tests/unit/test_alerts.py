"""AlertEngine in virtual time: each rule fires once when it starts to hold, is not
re-sent while it holds, resolves when it stops; the burn rate against a planned or a
learned baseline; evaluation on the interval; sinks."""

from __future__ import annotations

import logging

import pytest

from shoal.clock import VirtualClock
from shoal.errors import ConfigError
from shoal.observe.alert_config import AlertsConfig, WebhookConfig
from shoal.observe.alert_sinks import CallbackSink, LogSink
from shoal.observe.alerts import Alert, AlertEngine
from shoal.observe.events import EventBus

DAY = 86_400.0


def engine(clock: VirtualClock, **config: object) -> tuple[EventBus, AlertEngine]:
    bus = EventBus(clock)
    eng = AlertEngine(bus, AlertsConfig.model_validate(config), clock=clock)
    eng.subscribe()
    return bus, eng


def call(bus: EventBus, tokens: int = 100, *, run_id: str = "r1", step: str = "s",
         agent: str = "a", cost: float = 0.0, error: str = "", channel: str = "ch") -> None:
    bus.publish("call_end", {
        "run_id": run_id, "step": step, "agent": agent, "status": "error" if error else "ok",
        "error_type": error, "input_tokens": tokens - tokens // 4, "output_tokens": tokens // 4,
        "cost_usd": cost, "wasted_cost_usd": 0.0, "duration_s": 0.1}, channel=channel, model="m")


def keys(alerts: list[Alert]) -> list[str]:
    return [f"{a.key}:{a.state}" for a in alerts]


async def test_tokens_per_task_fires_once_then_resolves_when_the_step_ends() -> None:
    clock = VirtualClock()
    bus, eng = engine(clock, tokens_per_task=50_000, send_resolved=True)
    call(bus, 30_000)
    assert eng.evaluate() == []
    call(bus, 30_000)
    [alert] = eng.evaluate()
    assert (alert.rule, alert.subject, alert.state, alert.value) == (
        "tokens_per_task", "r1/s", "firing", 60_000)
    assert "60,000 tokens (limit 50,000)" in alert.message
    call(bus, 10_000)
    assert eng.evaluate() == []  # still holding: not sent again
    bus.emit("step_end", run_id="r1", step="s", agent="a", status="succeeded")
    assert eng.evaluate() == []  # the final value is seen once more...
    assert keys(eng.evaluate()) == ["tokens_per_task:r1/s:resolved"]  # ...then forgotten


async def test_turns_per_agent_counts_model_calls_of_one_invocation() -> None:
    clock = VirtualClock()
    bus, eng = engine(clock, turns_per_agent=50)
    bus.emit("agent_start", run_id="r1", step="s", agent="a", model="m")
    for _ in range(50):
        call(bus, 10)
    assert eng.evaluate() == []
    call(bus, 10)
    assert keys(eng.evaluate()) == ["turns_per_agent:r1/s/a:firing"]
    bus.emit("agent_start", run_id="r1", step="s", agent="a", model="m")  # a new invocation
    for _ in range(3):
        call(bus, 10)
    assert eng.evaluate() == []
    assert eng.firing == {}


async def test_cost_per_run_and_per_day_with_the_day_rolling_over() -> None:
    clock = VirtualClock(wall_start=1_700_000_000.0 - 1_700_000_000.0 % DAY)  # UTC midnight
    bus, eng = engine(clock, cost_per_run_usd=1.0, cost_per_day_usd=1.5)
    call(bus, cost=0.8, run_id="a")
    call(bus, cost=0.6, run_id="b")
    assert eng.evaluate() == []
    call(bus, cost=0.3, run_id="a")
    assert sorted(keys(eng.evaluate())) == ["cost_per_day:2023-11-14:firing",
                                           "cost_per_run:a:firing"]
    await clock.advance(DAY)
    call(bus, cost=0.1, run_id="c")
    assert eng.evaluate() == []
    assert list(eng.firing) == ["cost_per_run:a"]


async def test_error_rate_needs_enough_calls_in_the_window() -> None:
    clock = VirtualClock()
    bus, eng = engine(clock, error_rate=0.5, error_rate_min_calls=4, window_s=60)
    for _ in range(3):
        call(bus, error="ProviderUnavailable")
    assert eng.evaluate() == []  # 3 calls: too few to judge
    call(bus)
    [alert] = eng.evaluate()
    assert alert.key == "error_rate:all" and alert.value == 0.75
    await clock.advance(61)
    for _ in range(4):
        call(bus)
    assert eng.evaluate() == [] and eng.firing == {}  # the failures left the window


async def test_rate_limited_per_minute_per_channel() -> None:
    clock = VirtualClock()
    bus, eng = engine(clock, rate_limited_per_minute=2, window_s=60)
    for _ in range(2):
        bus.emit("retry", channel="glm", model="m", error="RateLimited", delay_s=1.0)
    bus.emit("retry", channel="kimi", model="m", error="ProviderUnavailable", delay_s=1.0)
    assert eng.evaluate() == []
    bus.emit("failover", channel="glm", model="m", error="RateLimited")
    assert keys(eng.evaluate()) == ["rate_limited:glm:firing"]


async def test_breaker_open_fires_per_channel_and_resolves_when_it_closes() -> None:
    clock = VirtualClock()
    bus, eng = engine(clock, send_resolved=True)
    bus.publish("breaker", {"from": "closed", "to": "open"}, channel="ds")
    assert keys(eng.evaluate()) == ["breaker_open:ds:firing"]
    bus.publish("breaker", {"from": "open", "to": "half_open"}, channel="ds")
    assert keys(eng.evaluate()) == ["breaker_open:ds:resolved"]


async def test_burn_rate_against_the_plan_fires_on_a_47x_spike_once() -> None:
    clock = VirtualClock()
    bus, eng = engine(clock, burn_rate=10, baseline_per_minute=1_000, interval_s=15)
    for _ in range(8):  # two minutes on plan: 250 tokens per 15 s
        call(bus, 250)
        await clock.advance(15)
        assert eng.evaluate() == []
    fired = []
    for _ in range(4):  # 47x the plan
        call(bus, 47 * 250)
        await clock.advance(15)
        fired += eng.evaluate()
    [alert] = fired
    assert alert.key == "burn_rate:tokens"
    assert alert.value == pytest.approx(47)
    assert "47.0x the baseline 1,000 tokens/min" in alert.message


async def test_burn_rate_learns_its_baseline_and_a_spike_does_not_teach_it() -> None:
    clock = VirtualClock()
    bus, eng = engine(clock, burn_rate=10, interval_s=15, baseline_min_s=300,
                      burn_on="cost")
    for _ in range(20):  # five minutes at $0.01 per 15 s
        assert eng.baseline() is None  # not enough history to judge yet
        call(bus, cost=0.01)
        await clock.advance(15)
        assert eng.evaluate() == []
    assert eng.baseline() == pytest.approx(0.04)
    fired = []
    for _ in range(40):  # ten minutes at 47x
        call(bus, cost=0.47)
        await clock.advance(15)
        fired += eng.evaluate()
    assert keys(fired) == ["burn_rate:cost:firing"]
    assert eng.baseline() == pytest.approx(0.04)


async def test_the_engine_evaluates_on_its_interval_and_sends_to_every_sink(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = VirtualClock()
    bus = EventBus(clock)
    got: list[Alert] = []

    async def also(alert: Alert) -> None:
        got.append(alert)

    eng = AlertEngine(bus, AlertsConfig(interval_s=10, tokens_per_task=100),
                      sinks=[LogSink(), CallbackSink(got.append), CallbackSink(also)],
                      clock=clock)
    caplog.set_level(logging.WARNING, "shoal.alerts")
    async with eng:
        await clock.advance(3)
        call(bus, 500)
        await clock.advance(6.9)
        assert got == []  # not evaluated yet
        await clock.advance(0.1)
        await eng.drain()
        assert [a.key for a in got] == ["tokens_per_task:r1/s"] * 2
        await clock.advance(30)
        await eng.drain()
        assert len(got) == 2
    assert "alert tokens_per_task:r1/s [firing]: step 's' of run r1 used 500" in caplog.text
    assert not bus.active


async def test_a_failing_sink_does_not_stop_the_others() -> None:
    clock = VirtualClock()
    bus = EventBus(clock)
    got: list[Alert] = []

    def broken(alert: Alert) -> None:
        raise RuntimeError("sink down")

    eng = AlertEngine(bus, AlertsConfig(breaker_open=True),
                      sinks=[CallbackSink(broken), CallbackSink(got.append)], clock=clock)
    eng.subscribe()
    bus.publish("breaker", {"to": "open"}, channel="x")
    await eng.tick()
    await eng.drain()
    assert [a.key for a in got] == ["breaker_open:x"]


def test_alert_json_has_the_key_and_an_iso_time() -> None:
    alert = Alert("burn_rate", "tokens", "firing", 47.0, 10.0, "spike", 1_700_000_000.0,
                  {"baseline": "1000"})
    body = alert.to_json()
    assert body["key"] == "burn_rate:tokens"
    assert body["time"] == "2023-11-14T22:13:20+00:00"
    assert body["labels"] == {"baseline": "1000"}


def test_webhook_config_needs_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_TEST_HOOK", raising=False)
    with pytest.raises(ConfigError, match=r"\$SHOAL_TEST_HOOK is not set"):
        WebhookConfig(url_env="SHOAL_TEST_HOOK").resolved_url()
    with pytest.raises(ConfigError, match="http:// or https://"):
        WebhookConfig.model_validate({"url": "ftp://x"}).resolved_url()
    monkeypatch.setenv("SHOAL_TEST_HOOK", "https://hooks.example/T0/secret-path")
    assert WebhookConfig(url_env="SHOAL_TEST_HOOK").resolved_url().endswith("secret-path")


def test_alerts_section_of_shoal_toml() -> None:
    from shoal.config import Config

    config = Config.from_dict({"alerts": {"burn_rate": 10, "baseline_per_minute": 20_000,
                                          "tokens_per_task": 50_000,
                                          "webhook": [{"url": "https://hooks.example/x"}]}})
    assert config.alerts is not None
    assert config.alerts.tokens_per_task == 50_000
    assert config.alerts.webhook[0].resolved_url() == "https://hooks.example/x"
    assert Config.from_dict({}).alerts is None
    with pytest.raises(ConfigError, match=r"invalid \[alerts\]: burn_rat: unknown field; "
                                          r"did you mean: burn_rate"):
        Config.from_dict({"alerts": {"burn_rat": 10}})
    with pytest.raises(ConfigError, match=r"invalid \[alerts\]: burn_rate: Input should be "
                                          "greater than 1"):
        Config.from_dict({"alerts": {"burn_rate": 0.5}})


async def test_an_early_tick_neither_judges_the_burn_rate_nor_resolves_it() -> None:
    clock = VirtualClock()
    bus, eng = engine(clock, burn_rate=10, baseline_per_minute=1_000, interval_s=15,
                      send_resolved=True)
    call(bus, 100)  # 100 tokens in 0.1 s would be 60,000/min: too short a span to say
    await clock.advance(0.1)
    assert eng.evaluate() == []
    await clock.advance(14.9)
    assert eng.evaluate() == []  # judged over the full 15 s: 400 tokens/min
    call(bus, 47 * 250)
    await clock.advance(15)
    assert keys(eng.evaluate()) == ["burn_rate:tokens:firing"]
    await clock.advance(1)
    assert eng.evaluate() == []  # the run ended early: still firing, not resolved
    await clock.advance(15)
    assert keys(eng.evaluate()) == ["burn_rate:tokens:resolved"]
