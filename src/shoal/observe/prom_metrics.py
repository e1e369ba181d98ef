"""The Prometheus metrics shoal exports, and how each event kind updates them.

:class:`Metrics` owns the metric families (registered on one ``CollectorRegistry``) and
one ``on_<kind>`` handler per event kind (``call_end``, one per model call, is counted in
batches: :mod:`shoal.observe.prom_calls`); :class:`shoal.observe.prometheus.PrometheusExporter`
subscribes it to an :class:`~shoal.observe.events.EventBus`. The list of series, with
their labels, is in docs/observe.md.

Label values are names shoal's user chose (channel, model, agent, tool, flow, step
status) or error class names; never an error message, a prompt, an output or a key.
The series are plain numbers (:mod:`shoal.observe.prom_series`), the Prometheus families
built only when scraped (after counting the call_end events still waiting).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from shoal.observe.events import Event
from shoal.observe.prom_calls import (
    BATCH,
    DURATION_BUCKETS,
    TOKEN_BUCKETS,
    TOKEN_KEYS,
    WAIT_BUCKETS,
    CallKind,
    Labels,
    count_batch,
)
from shoal.observe.prom_series import Counter, Gauge, Histogram, Series

__all__ = ["DURATION_BUCKETS", "TOKEN_BUCKETS", "TOKEN_TYPES", "Metrics"]

TURN_BUCKETS = (1, 2, 3, 5, 8, 13, 20, 30, 50, 100)
# event data key → the ``type`` label of shoal_tokens_total
TOKEN_TYPES = dict(TOKEN_KEYS)

_CALL = ("call",)
BREAKER_STATES = {"closed": 0.0, "half_open": 1.0, "half-open": 1.0, "open": 2.0}


def _num(data: Mapping[str, object], key: str) -> float:
    value = data.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _str(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else "" if value is None else str(value)


class Metrics(Collector):
    """Every shoal metric, updated by :meth:`handle`; a ``prometheus_client`` collector
    (register it on a ``CollectorRegistry``)."""

    def __init__(self, *, keep_runs: int = 50) -> None:
        self.series: list[Series | Histogram] = []

        def counter(name: str, doc: str, *labels: str) -> Counter:
            self.series.append(c := Counter(name, doc, labels))
            return c

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            self.series.append(g := Gauge(name, doc, labels))
            return g

        def hist(name: str, doc: str, buckets: tuple[float, ...], *labels: str) -> Histogram:
            self.series.append(h := Histogram(name, doc, labels, buckets))
            return h

        # per channel
        self.requests = counter("shoal_channel_requests", "Provider attempts by outcome "
                                "(ok, or the error class).", "channel", "outcome")
        self.rate_limited = counter("shoal_channel_rate_limited", "HTTP 429 answers "
                                    "(RateLimited).", "channel")
        self.quota = counter("shoal_channel_quota_errors", "Quota or balance exhausted "
                             "(QuotaExhausted).", "channel")
        self.retries = counter("shoal_channel_retries", "Retries after a failed attempt.",
                               "channel", "error")
        self.failovers = counter("shoal_channel_failovers", "Failovers away from a channel.",
                                 "channel", "error")
        self.waits = counter("shoal_channel_waits", "Calls that queued: for capacity, "
                             "an open breaker or the retry budget.", "channel", "reason")
        self.queue_wait = hist("shoal_channel_queue_wait_seconds", "Time a call spent "
                               "waiting for capacity, all its attempts (by the channel "
                               "that answered).", WAIT_BUCKETS, "channel")
        self.breaker_changes = counter("shoal_channel_breaker_transitions", "Circuit "
                                       "breaker state changes.", "channel", "to")
        # per model and agent
        self.calls = counter("shoal_model_calls", "Logical model calls (retries inside).",
                             "model", "agent", "status")
        self.tokens = counter("shoal_tokens", "Tokens by type (cached_input and "
                              "cache_write are part of input; reasoning of output).",
                              "model", "agent", "type")
        self.cost = counter("shoal_cost_usd", "Estimated cost in US dollars.", "model", "agent")
        self.wasted = counter("shoal_wasted_cost_usd", "Cost of billed answers discarded "
                              "on the way (cut streams, retried answers).", "model", "agent")
        self.latency = hist("shoal_model_call_duration_seconds", "Logical call duration, "
                            "queueing and retries included.", DURATION_BUCKETS, "model", "agent")
        self.ttft = hist("shoal_model_time_to_first_token_seconds", "Time to the first "
                         "token of a streamed call.", DURATION_BUCKETS, "model", "agent")
        self.attempts = counter("shoal_model_attempts", "Provider attempts made by logical "
                                "calls.", "model", "agent")
        self.agents = counter("shoal_agent_invocations", "Agent invocations that ended.",
                              "agent", "status")
        self.turns = hist("shoal_agent_turns", "Turns per agent invocation.", TURN_BUCKETS,
                          "agent")
        self.tools = counter("shoal_tool_calls", "Tool calls that ended.", "agent", "tool",
                             "status")
        self.tool_latency = hist("shoal_tool_duration_seconds", "Tool call duration.",
                                 DURATION_BUCKETS, "tool")
        self.guards = counter("shoal_guard_decisions", "Guard decisions.", "guard", "decision")
        self.budgets = counter("shoal_budget_decisions", "Budget decisions.", "decision")
        self.journal = counter("shoal_journal_writes", "Journal writes.", "what")
        # per run
        self.runs = counter("shoal_runs", "Runs that ended.", "flow", "status")
        self.run_latency = hist("shoal_run_duration_seconds", "Run duration.",
                                DURATION_BUCKETS, "flow")
        self.steps = counter("shoal_steps", "Steps that ended.", "status")
        self.run_steps = gauge("shoal_run_steps", "Steps of a run by status (running "
                               "included); the last finished runs are kept.", "run_id",
                               "status")
        self.running = gauge("shoal_running", "Runs, steps, agents, tools and model calls "
                             "in progress.", "what")
        # OpenTelemetry GenAI semantic conventions, in Prometheus form
        self.genai_tokens = hist("gen_ai_client_token_usage", "gen_ai.client.token.usage: "
                                 "tokens used per call.", TOKEN_BUCKETS,
                                 "gen_ai_operation_name", "gen_ai_provider_name",
                                 "gen_ai_request_model", "gen_ai_response_model",
                                 "gen_ai_token_type")
        self.genai_duration = hist("gen_ai_client_operation_duration_seconds",
                                   "gen_ai.client.operation.duration: call duration.",
                                   DURATION_BUCKETS, "gen_ai_operation_name",
                                   "gen_ai_provider_name", "gen_ai_request_model",
                                   "gen_ai_response_model", "error_type")
        self._keep_runs = keep_runs
        self._run_counts: dict[str, dict[str, int]] = {}
        self._finished_runs: deque[str] = deque()
        self._active_steps: set[tuple[str, str]] = set()
        self.call_kinds: dict[Labels, CallKind] = {}
        self._calls_running: list[float] | None = None
        # call_end events not counted yet (prom_calls.py): appended by the bus itself,
        # counted BATCH at a time and before every scrape, under the lock (scrapes come
        # from other threads)
        self._ends: list[Event] = []
        self._counting = threading.Lock()
        # event-derived channel state (the collector prefers a Router's live stats)
        self.breaker_state: dict[str, str] = {}
        self.limits: dict[str, float] = {}
        self.queued: dict[str, float] = {}
        self._handlers: dict[str, Callable[[Event], None]] = {
            name[3:]: getattr(self, name) for name in dir(self) if name.startswith("on_")}
        self._handlers["call_end"] = self._ends.append

    def handle(self, event: Event) -> None:
        """Update the metrics for one event (unknown kinds are ignored)."""
        handler = self._handlers.get(event.kind)
        if handler is not None:
            handler(event)

    def routes(self) -> dict[str, Callable[[Event], None]]:
        """The handler of each kind the metrics follow, for
        ``bus.subscribe(kinds=metrics.routes())``: what :meth:`handle` would call, called
        by the bus itself (other kinds are not delivered)."""
        return dict(self._handlers)

    def flush(self) -> None:
        """Count the call_end events waiting (any thread; a scrape does it first)."""
        ends = self._ends
        if not ends:
            return
        with self._counting:
            n = len(ends)
            if not n:
                return
            batch = ends[:n]
            del ends[:n]  # events appended meanwhile stay, after these
            count_batch(self, batch)

    def collect(self) -> Iterator[Metric]:
        self.flush()
        for s in self.series:
            yield s.family()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families appear as they are first used: no fixed list to check

    # -- traffic ------------------------------------------------------------------------

    def on_wait(self, e: Event) -> None:
        reason = _str(e.data, "reason") or "capacity"
        self.waits.inc((e.channel, reason))
        if e.channel and "queued" in e.data:
            self.queued[e.channel] = _num(e.data, "queued")

    def attempt_failed(self, channel: str, error: str, n: float = 1.0) -> None:
        """``n`` provider attempts on ``channel`` ended with ``error`` (a class name)."""
        if not channel:  # an agent falling back to its next model: no channel attempt
            return
        self.requests.inc((channel, error or "error"), n)
        if error == "RateLimited":
            self.rate_limited.inc((channel,), n)
        elif error == "QuotaExhausted":
            self.quota.inc((channel,), n)

    def on_retry(self, e: Event) -> None:
        error = _str(e.data, "error")
        self.retries.inc((e.channel, error))
        self.attempt_failed(e.channel, error)

    def on_failover(self, e: Event) -> None:
        error = _str(e.data, "error")
        self.failovers.inc((e.channel, error))
        self.attempt_failed(e.channel, error)

    def on_breaker(self, e: Event) -> None:
        to = _str(e.data, "to")
        self.breaker_changes.inc((e.channel, to))
        self.breaker_state[e.channel] = to

    def on_limit_change(self, e: Event) -> None:
        self.limits[e.channel] = _num(e.data, "to")

    # -- calls (the hot path: one call_start and one call_end per model call) -----------

    def running_calls(self) -> list[float]:
        """The running total of model calls in progress (made at the first call event:
        the series appears then)."""
        cell = self._calls_running
        if cell is None:
            cell = self._calls_running = self.running.cell(_CALL)
        return cell

    def on_call_start(self, e: Event) -> None:
        (self._calls_running or self.running_calls())[0] += 1.0
        if len(self._ends) >= BATCH:  # the calls that ended meanwhile, counted together
            self.flush()

    # -- agents, tools, guards ----------------------------------------------------------

    def on_agent_start(self, e: Event) -> None:
        self.running.add(("agent",), 1.0)

    def on_agent_end(self, e: Event) -> None:
        agent = _str(e.data, "agent")
        self.running.add(("agent",), -1.0)
        self.agents.inc((agent, _str(e.data, "status")))
        self.turns.observe((agent,), _num(e.data, "turns"))

    def on_tool_start(self, e: Event) -> None:
        self.running.add(("tool",), 1.0)

    def on_tool_end(self, e: Event) -> None:
        tool = _str(e.data, "tool")
        self.running.add(("tool",), -1.0)
        self.tools.inc((_str(e.data, "agent"), tool, _str(e.data, "status")))
        self.tool_latency.observe((tool,), _num(e.data, "duration_s"))

    def on_guard(self, e: Event) -> None:
        self.guards.inc((_str(e.data, "guard"), _str(e.data, "decision")))

    def on_budget(self, e: Event) -> None:
        self.budgets.inc((_str(e.data, "decision"),))

    def on_journal(self, e: Event) -> None:
        self.journal.inc((_str(e.data, "what"),))

    # -- runs and steps -----------------------------------------------------------------

    def on_run_start(self, e: Event) -> None:
        self.running.add(("run",), 1.0)

    def on_run_end(self, e: Event) -> None:
        d = e.data
        self.running.add(("run",), -1.0)
        self.runs.inc((_str(d, "flow"), _str(d, "status")))
        self.run_latency.observe((_str(d, "flow"),), _num(d, "duration_s"))
        run_id = _str(d, "run_id")
        if run_id in self._run_counts:
            self._finished_runs.append(run_id)
            while len(self._finished_runs) > self._keep_runs:
                old = self._finished_runs.popleft()
                for status in self._run_counts.pop(old, {}):
                    self.run_steps.remove((old, status))

    def _run_step(self, run_id: str, status: str, delta: int) -> None:
        counts = self._run_counts.setdefault(run_id, {})
        counts[status] = counts.get(status, 0) + delta
        self.run_steps.set((run_id, status), counts[status])

    def on_step_start(self, e: Event) -> None:
        key = (_str(e.data, "run_id"), _str(e.data, "step"))
        if key not in self._active_steps:
            self._active_steps.add(key)
            self.running.add(("step",), 1.0)
            self._run_step(key[0], "running", 1)

    def on_step_end(self, e: Event) -> None:
        key = (_str(e.data, "run_id"), _str(e.data, "step"))
        status = _str(e.data, "status")
        self.steps.inc((status,))
        if key in self._active_steps:  # a replayed step may never have started
            self._active_steps.discard(key)
            self.running.add(("step",), -1.0)
            self._run_step(key[0], "running", -1)
        self._run_step(key[0], status, 1)
