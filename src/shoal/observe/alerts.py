"""Alerts before the bill: thresholds on shoal's events, evaluated on an interval.

An :class:`AlertEngine` subscribes to an :class:`~shoal.observe.events.EventBus`, tallies
what the events say (tokens per task, turns per agent invocation, cost per run and per
day, calls that failed, 429s, breaker states, tokens or dollars per minute), and every
``interval_s`` compares the tallies with the thresholds of an
:class:`~shoal.observe.alert_config.AlertsConfig`. A rule that starts to hold fires one
:class:`Alert` (``state="firing"``), sent to every sink; while it keeps holding nothing
more is sent (de-duplicated by :attr:`Alert.key`); when it stops holding a ``resolved``
alert follows if ``send_resolved``. Sinks (:mod:`shoal.observe.alert_sinks`): a log, a
webhook (POST JSON), a Python callback.

The rules, and the subject each fires for:

=================== ============================================== ==================
rule                holds when                                      subject
=================== ============================================== ==================
tokens_per_task     a step's tokens > tokens_per_task              run_id/step
turns_per_agent     model calls in one agent invocation > limit    run_id/step/agent
cost_per_run        a run's cost (wasted answers included) > limit run_id
cost_per_day        today's cost (UTC, the clock's wall time)      the date
error_rate          failed calls / calls over window_s ≥ limit     all
rate_limited        429s per minute over window_s > limit          channel
breaker_open        a channel's circuit breaker is open            channel
burn_rate           tokens (or $) per minute over the last         tokens or cost
                    interval ≥ burn_rate × the baseline
=================== ============================================== ==================

The burn-rate baseline is ``baseline_per_minute`` (the plan) or, unset, the rate over
the last ``baseline_s`` of evaluated intervals (at least ``baseline_min_s`` of them),
intervals during which the burn alert fired left out, so a long spike never becomes
its own baseline. Time is the engine's clock (a ``VirtualClock`` in tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from shoal.clock import Clock, RealClock
from shoal.observe.alert_config import AlertsConfig
from shoal.observe.events import Event, EventBus

if TYPE_CHECKING:
    from shoal.observe.alert_sinks import Sink

__all__ = ["Alert", "AlertEngine"]

_log = logging.getLogger("shoal.alerts")
_TOKEN_KEYS = ("input_tokens", "output_tokens")  # cached/reasoning are inside these
_WINDOW_MAX = 100_000


@dataclass(frozen=True, slots=True)
class Alert:
    """One rule starting (``firing``) or ceasing (``resolved``) to hold for a subject."""

    rule: str
    subject: str
    state: Literal["firing", "resolved"]
    value: float
    threshold: float
    message: str
    at: float  # the clock's wall time (epoch seconds)
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """What de-duplicates: one firing per rule and subject until it resolves."""
        return f"{self.rule}:{self.subject}"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["key"] = self.key
        out["labels"] = dict(self.labels)
        out["time"] = dt.datetime.fromtimestamp(self.at, dt.UTC).isoformat()
        return out


def _num(data: Mapping[str, object], key: str) -> float:
    value = data.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _str(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


Verdict = tuple[float, float, str, dict[str, str]]  # value, threshold, message, labels


class _Tally:
    """What the events said since the engine started (pruned as runs and steps end)."""

    def __init__(self) -> None:
        self.task_tokens: dict[tuple[str, str], float] = {}
        self.agent_turns: dict[tuple[str, str, str], int] = {}
        self.run_cost: dict[str, float] = {}
        self.day_cost: dict[str, float] = {}
        # bounded in case nobody evaluates (the window prunes them at each evaluation)
        self.calls: deque[tuple[float, bool]] = deque(maxlen=_WINDOW_MAX)  # (at, failed)
        self.limited: deque[tuple[float, str]] = deque(maxlen=_WINDOW_MAX)  # (at, channel)
        self.breakers: dict[str, str] = {}
        self.burn_tokens = 0.0  # since the last evaluation
        self.burn_cost = 0.0
        self.ended_tasks: set[tuple[str, str]] = set()
        self.ended_agents: set[tuple[str, str, str]] = set()
        self.ended_runs: set[str] = set()

    def prune_ended(self) -> None:
        """Forget what ended (after one evaluation has seen its final value)."""
        for task in self.ended_tasks:
            self.task_tokens.pop(task, None)
        for agent in self.ended_agents:
            self.agent_turns.pop(agent, None)
        for run in self.ended_runs:
            self.run_cost.pop(run, None)
        self.ended_tasks.clear()
        self.ended_agents.clear()
        self.ended_runs.clear()


class AlertEngine:
    """Evaluates an :class:`AlertsConfig` against a bus's events (module docstring)."""

    def __init__(self, bus: EventBus, config: AlertsConfig | None = None, *,
                 sinks: Iterable[Sink] = (), clock: Clock | None = None) -> None:
        self.bus = bus
        self.config = config if config is not None else AlertsConfig()
        self.sinks: list[Sink] = list(sinks)
        self.clock: Clock = clock if clock is not None else RealClock()
        self.firing: dict[str, Alert] = {}
        self.sent: deque[Alert] = deque(maxlen=1000)  # the last transitions, in order
        self._tally = _Tally()
        self._burn_from = self.clock.now()  # the tokens/cost tallied for the burn rate since
        self._history: deque[tuple[float, float, float]] = deque()  # (span_s, tokens, usd)
        self._still_burning: Verdict = (0.0, 0.0, "", {})
        self._unsubscribe: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(cls, bus: EventBus, config: AlertsConfig, *, clock: Clock | None = None,
                    callback: Callable[[Alert], Any] | None = None) -> AlertEngine:
        """An engine with the sinks ``config`` names (log, webhooks) plus ``callback``."""
        from shoal.observe.alert_sinks import CallbackSink, LogSink, WebhookSink

        clock = clock if clock is not None else RealClock()
        sinks: list[Sink] = [LogSink()] if config.log else []
        sinks += [WebhookSink.from_config(w, clock=clock) for w in config.webhook]
        if callback is not None:
            sinks.append(CallbackSink(callback))
        return cls(bus, config, sinks=sinks, clock=clock)

    # -- events -------------------------------------------------------------------------

    def subscribe(self) -> Callable[[], None]:
        """Start tallying the bus's events (idempotent); returns the unsubscribe."""
        if self._unsubscribe is None:
            self._unsubscribe = self.bus.subscribe(self.observe)
        return self.unsubscribe

    def unsubscribe(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def observe(self, e: Event) -> None:
        """Tally one event (what :meth:`subscribe` feeds)."""
        t, d, kind = self._tally, e.data, e.kind
        if kind == "call_end":
            tokens = sum(_num(d, k) for k in _TOKEN_KEYS)
            cost = _num(d, "cost_usd") + _num(d, "wasted_cost_usd")
            run_id, step, agent = _str(d, "run_id"), _str(d, "step"), _str(d, "agent")
            if run_id:
                task = (run_id, step)
                t.task_tokens[task] = t.task_tokens.get(task, 0.0) + tokens
                t.run_cost[run_id] = t.run_cost.get(run_id, 0.0) + cost
                turn = (run_id, step, agent)
                t.agent_turns[turn] = t.agent_turns.get(turn, 0) + 1
            day = dt.datetime.fromtimestamp(self.clock.wall(), dt.UTC).date().isoformat()
            t.day_cost[day] = t.day_cost.get(day, 0.0) + cost
            t.burn_tokens += tokens
            t.burn_cost += cost
            error = _str(d, "error_type")
            t.calls.append((e.at, bool(error) or _str(d, "status") == "error"))
            if error == "RateLimited":
                t.limited.append((e.at, e.channel))
        elif kind in ("retry", "failover"):
            if _str(d, "error") == "RateLimited":
                t.limited.append((e.at, e.channel))
        elif kind == "breaker":
            t.breakers[e.channel] = _str(d, "to")
        elif kind == "agent_start":
            turn = (_str(d, "run_id"), _str(d, "step"), _str(d, "agent"))
            t.agent_turns[turn] = 0
            t.ended_agents.discard(turn)
        elif kind == "agent_end":
            t.ended_agents.add((_str(d, "run_id"), _str(d, "step"), _str(d, "agent")))
        elif kind == "step_end":
            t.ended_tasks.add((_str(d, "run_id"), _str(d, "step")))
        elif kind == "run_end":
            t.ended_runs.add(_str(d, "run_id"))

    # -- evaluation ---------------------------------------------------------------------

    def _holding(self, now: float) -> dict[tuple[str, str], Verdict]:
        """Every (rule, subject) that holds now, with its value, threshold and message."""
        c, t = self.config, self._tally
        out: dict[tuple[str, str], Verdict] = {}
        if c.tokens_per_task is not None:
            for (run_id, step), n in t.task_tokens.items():
                if n > c.tokens_per_task:
                    out["tokens_per_task", f"{run_id}/{step}"] = (
                        n, c.tokens_per_task, f"step {step!r} of run {run_id} used {n:,.0f} "
                        f"tokens (limit {c.tokens_per_task:,})", {"run_id": run_id, "step": step})
        if c.turns_per_agent is not None:
            for (run_id, step, agent), turns in t.agent_turns.items():
                if turns > c.turns_per_agent:
                    out["turns_per_agent", f"{run_id}/{step}/{agent}"] = (
                        turns, c.turns_per_agent, f"agent {agent!r} (run {run_id}, step "
                        f"{step!r}) made {turns} model calls (limit {c.turns_per_agent})",
                        {"run_id": run_id, "step": step, "agent": agent})
        if c.cost_per_run_usd is not None:
            for run_id, usd in t.run_cost.items():
                if usd > c.cost_per_run_usd:
                    out["cost_per_run", run_id] = (
                        usd, c.cost_per_run_usd, f"run {run_id} has cost ${usd:.4f} "
                        f"(limit ${c.cost_per_run_usd:g})", {"run_id": run_id})
        if c.cost_per_day_usd is not None:
            today = dt.datetime.fromtimestamp(self.clock.wall(), dt.UTC).date().isoformat()
            for day in [d for d in t.day_cost if d != today]:
                del t.day_cost[day]
            usd = t.day_cost.get(today, 0.0)
            if usd > c.cost_per_day_usd:
                out["cost_per_day", today] = (usd, c.cost_per_day_usd, f"${usd:.4f} spent "
                                              f"on {today} (UTC; limit ${c.cost_per_day_usd:g})",
                                              {"day": today})
        self._windowed(now, out)
        if c.breaker_open:
            for channel, state in t.breakers.items():
                if state == "open":
                    out["breaker_open", channel] = (1, 1, f"channel {channel!r}: circuit "
                                                    "breaker open", {"channel": channel})
        return out

    def _windowed(self, now: float, out: dict[tuple[str, str], Verdict]) -> None:
        c, t = self.config, self._tally
        start = now - c.window_s
        while t.calls and t.calls[0][0] < start:
            t.calls.popleft()
        while t.limited and t.limited[0][0] < start:
            t.limited.popleft()
        if c.error_rate is not None and len(t.calls) >= c.error_rate_min_calls:
            failed = sum(1 for _, bad in t.calls if bad)
            rate = failed / len(t.calls)
            if rate >= c.error_rate:
                out["error_rate", "all"] = (rate, c.error_rate, f"{failed} of {len(t.calls)} "
                                            f"calls failed in the last {c.window_s:g}s "
                                            f"({rate:.0%}; limit {c.error_rate:.0%})", {})
        if c.rate_limited_per_minute is not None:
            per: dict[str, int] = {}
            for _, channel in t.limited:
                per[channel] = per.get(channel, 0) + 1
            for channel, n in per.items():
                rate = n * 60.0 / c.window_s
                if rate > c.rate_limited_per_minute:
                    out["rate_limited", channel] = (
                        rate, c.rate_limited_per_minute, f"channel {channel!r}: {rate:.1f} "
                        f"429s per minute over the last {c.window_s:g}s "
                        f"(limit {c.rate_limited_per_minute:g})", {"channel": channel})

    def baseline(self) -> float | None:
        """The burn rate's baseline per minute: the plan, or learned (None: too little
        history yet)."""
        c = self.config
        if c.baseline_per_minute is not None:
            return c.baseline_per_minute
        span = sum(s for s, _, _ in self._history)
        if span < c.baseline_min_s:
            return None
        amount = sum(tok if c.burn_on == "tokens" else usd for _, tok, usd in self._history)
        return amount * 60.0 / span if amount > 0 else None

    def _burn(self, now: float, out: dict[tuple[str, str], Verdict]) -> None:
        c, t = self.config, self._tally
        span = now - self._burn_from
        if span < c.interval_s / 2:  # an early tick (the end of a run): too short to judge
            if f"burn_rate:{c.burn_on}" in self.firing:
                out["burn_rate", c.burn_on] = self._still_burning
            return
        tokens, usd = t.burn_tokens, t.burn_cost
        t.burn_tokens = t.burn_cost = 0.0
        self._burn_from = now
        if c.burn_rate is not None:
            base = self.baseline()
            rate = (tokens if c.burn_on == "tokens" else usd) * 60.0 / span
            if base is not None and rate >= c.burn_rate * base:
                unit = "tokens" if c.burn_on == "tokens" else "USD"
                out["burn_rate", c.burn_on] = self._still_burning = (
                    rate / base, c.burn_rate, f"{rate:,.4g} {unit}/min over the last "
                    f"{span:g}s is {rate / base:.1f}x the baseline {base:,.4g} {unit}/min "
                    f"(alert at {c.burn_rate:g}x)",
                    {"per_minute": f"{rate:.6g}", "baseline": f"{base:.6g}"})
        if f"burn_rate:{c.burn_on}" not in self.firing and ("burn_rate", c.burn_on) not in out:
            self._history.append((span, tokens, usd))  # a spike never teaches the baseline
            total = sum(s for s, _, _ in self._history)
            while self._history and total - self._history[0][0] >= c.baseline_s:
                total -= self._history.popleft()[0]

    def evaluate(self) -> list[Alert]:
        """Compare the tallies with the thresholds now; returns the transitions (new
        firings, and resolutions when ``send_resolved``) and records them in
        :attr:`firing` and :attr:`sent`. :meth:`tick` also sends them."""
        now, wall = self.clock.now(), self.clock.wall()
        holding = self._holding(now)
        self._burn(now, holding)
        changes: list[Alert] = []
        for (rule, subject), (value, threshold, message, labels) in holding.items():
            key = f"{rule}:{subject}"
            if key not in self.firing:
                alert = Alert(rule, subject, "firing", value, threshold, message, wall, labels)
                self.firing[key] = alert
                changes.append(alert)
        held = {f"{r}:{s}" for r, s in holding}
        for key in [k for k in self.firing if k not in held]:
            was = self.firing.pop(key)
            if self.config.send_resolved:
                changes.append(Alert(was.rule, was.subject, "resolved", 0.0, was.threshold,
                                     f"resolved: {was.message}", wall, was.labels))
        self._tally.prune_ended()
        self.sent.extend(changes)
        return changes

    # -- delivery -----------------------------------------------------------------------

    async def tick(self) -> list[Alert]:
        """:meth:`evaluate`, then hand each transition to every sink (in the background:
        a slow webhook never delays the next evaluation)."""
        changes = self.evaluate()
        for alert in changes:
            for sink in self.sinks:
                task = asyncio.create_task(self._send(sink, alert))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
        return changes

    @staticmethod
    async def _send(sink: Sink, alert: Alert) -> None:
        try:
            await sink.send(alert)
        except Exception:
            _log.exception("alert sink %r failed on %s", sink, alert.key)

    async def run(self) -> None:
        """Evaluate every ``interval_s`` until cancelled."""
        while True:
            await self.clock.sleep(self.config.interval_s)
            await self.tick()

    def start(self) -> AlertEngine:
        """Subscribe and evaluate in a background task (inside a running loop)."""
        self.subscribe()
        self._burn_from = self.clock.now()
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="shoal-alerts")
        return self

    async def drain(self) -> None:
        """Wait for the alerts being sent."""
        while self._sending:
            await asyncio.gather(*list(self._sending), return_exceptions=True)

    async def aclose(self) -> None:
        """Stop evaluating, let the sends finish, close the sinks."""
        self.unsubscribe()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.drain()
        for sink in self.sinks:
            await sink.aclose()

    async def __aenter__(self) -> AlertEngine:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
