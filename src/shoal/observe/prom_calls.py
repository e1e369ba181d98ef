"""``call_end`` events counted into the Prometheus series, in batches.

A model call ends with one ``call_end`` event; the exporter's handler for it is the bare
``list.append`` of a pending list (no Python frame on the call's path). The pending
events are counted when :data:`BATCH` of them wait (checked at the next ``call_start``)
and before every scrape, so what a scrape shows is exact. A batch is counted a column
at a time by C loops (``map`` over ``itemgetter``, ``sum``, ``sorted`` and a bisect per
bucket bound) per kind of call (one label combination), where counting each event by itself
ran ~375 bytecodes a call: the largest single cost of observing a call with everything
on (docs/DECISIONS.md, "Observing a call: counted in batches").

Events whose fields are not all there, or not numbers where the vocabulary says so
(hand-made events, tests), are counted one by one by :func:`count_one`, which is the
reference: a batch adds exactly what counting its events one by one would.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.observe.events import Event
    from shoal.observe.prom_metrics import Metrics

__all__ = ["BATCH", "DURATION_BUCKETS", "TOKEN_BUCKETS", "TOKEN_KEYS", "WAIT_BUCKETS",
           "CallKind", "count_batch", "count_one"]

BATCH = 64  # pending call_end events counted together (and at every scrape)

# The OpenTelemetry GenAI semantic conventions' advised bucket boundaries.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                    20.48, 40.96, 81.92)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# the histograms' bounds as floats (what Histogram keeps), for call_end's own bisects
DURATION_BOUNDS = tuple(float(b) for b in DURATION_BUCKETS)
WAIT_BOUNDS = tuple(float(b) for b in WAIT_BUCKETS)
TOKEN_BOUNDS = tuple(float(b) for b in TOKEN_BUCKETS)
# event data key → the ``type`` label of shoal_tokens_total
TOKEN_KEYS = (("input_tokens", "input"), ("output_tokens", "output"),
              ("cached_input_tokens", "cached_input"), ("cache_write_tokens", "cache_write"),
              ("reasoning_tokens", "reasoning"))

Labels = tuple[str, str, str, str, str, str, str]

_WHERE = attrgetter("channel", "model")
_DATA = attrgetter("data")
_LABELS = itemgetter("agent", "status", "provider", "served_model", "error_type")
_COLUMNS = {key: itemgetter(key) for key in (
    "queue_s", "attempts", "cost_usd", "wasted_cost_usd", "duration_s", "ttft_s",
    *(k for k, _ in TOKEN_KEYS))}


class CallKind:
    """What one kind of call_end (one label combination) updates: the series' running
    totals and histogram counts themselves, taken once (no label tuple hashed per call).
    Series that a call updates only when a value is not zero (token types, waste, time
    to first token) are taken at their first update, so they appear as they did."""

    __slots__ = ("attempts", "calls", "channel", "cost", "error", "genai_duration",
                 "genai_tokens", "latency", "ma", "queue_wait", "request", "tokens", "ttft",
                 "wasted")

    def __init__(self, m: Metrics, labels: Labels) -> None:
        channel, model, agent, status, provider, served, error = labels
        self.channel, self.error = channel, error
        self.ma = ma = (model, agent)
        self.queue_wait = m.queue_wait.counts((channel,)) if channel else None
        self.request = (m.requests.cell((channel, "ok")) if channel and not error
                        else None)
        self.calls = m.calls.cell((model, agent, status))
        self.attempts = m.attempts.cell(ma)
        # per token type (TOKEN_KEYS' order), its cell once made
        self.tokens: list[list[float] | None] = [None] * len(TOKEN_KEYS)
        self.cost = m.cost.cell(ma)
        self.wasted: list[float] | None = None
        self.latency = m.latency.counts(ma)
        self.ttft: list[float] | None = None
        # gen_ai_client_token_usage's input and output counts (calls without an error)
        self.genai_tokens = None if error else (
            m.genai_tokens.counts(("chat", provider, model, served, "input")),
            m.genai_tokens.counts(("chat", provider, model, served, "output")))
        self.genai_duration = m.genai_duration.counts(("chat", provider, model, served,
                                                       error))

    def token_cell(self, m: Metrics, i: int) -> list[float]:
        cell = self.tokens[i]
        if cell is None:
            cell = self.tokens[i] = m.tokens.cell((*self.ma, TOKEN_KEYS[i][1]))
        return cell

    def wasted_cell(self, m: Metrics) -> list[float]:
        if self.wasted is None:
            self.wasted = m.wasted.cell(self.ma)
        return self.wasted

    def ttft_counts(self, m: Metrics) -> list[float]:
        if self.ttft is None:
            self.ttft = m.ttft.counts(self.ma)
        return self.ttft


def _kind(m: Metrics, e: Event) -> CallKind:
    d: Mapping[str, Any] = e.data
    get = d.get
    model = e.model
    labels = (e.channel, model, get("agent") or "", get("status") or "",
              get("provider") or "", get("served_model") or model, get("error_type") or "")
    k = m.call_kinds.get(labels)
    if k is None:  # the series of this kind of call, taken once
        k = m.call_kinds[labels] = CallKind(m, labels)
    return k


def count_one(m: Metrics, e: Event) -> None:
    """Count one call_end event (any fields missing count as 0 or empty)."""
    k = _kind(m, e)
    d: Mapping[str, Any] = e.data  # numbers where the vocabulary says so
    get = d.get
    m.running_calls()[0] -= 1.0
    counts = k.queue_wait
    if counts is not None:
        value = get("queue_s") or 0.0
        counts[bisect_left(WAIT_BOUNDS, value)] += 1
        counts[-1] += value
    if k.request is not None:  # the last attempt's outcome (earlier: retry/failover)
        k.request[0] += 1.0
    elif k.error and k.channel:
        m.attempt_failed(k.channel, k.error)
    k.calls[0] += 1.0
    k.attempts[0] += get("attempts") or 0
    for i, (key, _) in enumerate(TOKEN_KEYS):
        n = get(key)
        if n:
            k.token_cell(m, i)[0] += n
    k.cost[0] += get("cost_usd") or 0.0
    wasted = get("wasted_cost_usd")
    if wasted:
        k.wasted_cell(m)[0] += wasted
    duration = get("duration_s") or 0.0
    at = bisect_left(DURATION_BOUNDS, duration)
    for counts in (k.latency, k.genai_duration):
        counts[at] += 1
        counts[-1] += duration
    ttft = get("ttft_s")
    if ttft:
        counts = k.ttft_counts(m)
        counts[bisect_left(DURATION_BOUNDS, ttft)] += 1
        counts[-1] += ttft
    if k.genai_tokens is not None:
        for counts, value in zip(k.genai_tokens, (get("input_tokens") or 0,
                                                  get("output_tokens") or 0), strict=True):
            counts[bisect_left(TOKEN_BOUNDS, value)] += 1
            counts[-1] += value


def _buckets(bounds: tuple[float, ...], values: Sequence[float]) -> list[tuple[int, int]]:
    """(bucket, how many of ``values`` fall in it) for the buckets that got any; a value
    is in bucket ``bisect_left(bounds, value)``, as one by one counts it. ``values``
    sorted once, then one bisect per bound until all are placed (most calls fit the
    first bucket or two: a bisect or two per batch)."""
    ordered = sorted(values)
    total, below = len(ordered), 0
    out: list[tuple[int, int]] = []
    for at, bound in enumerate(bounds):
        if below == total:
            return out
        upto = bisect_right(ordered, bound, below)
        if upto > below:
            out.append((at, upto - below))
            below = upto
    if below < total:
        out.append((len(bounds), total - below))
    return out


def _add(counts: list[float], tally: list[tuple[int, int]], values: Sequence[float]) -> None:
    for at, n in tally:
        counts[at] += n
    counts[-1] = sum(values, counts[-1])  # left to right, as one by one would


def _rare(column: Callable[[Mapping[str, Any]], Any], datas: list[Mapping[str, Any]]
          ) -> list[float]:
    """A column most calls have nothing in (0): empty unless one has some. Checked as
    one by one would: a None or 0 adds nothing, anything else must be a number."""
    if not any(map(column, datas)):
        return []
    values = [v for v in map(column, datas) if v]
    sum(values)  # raises for a text, before anything is counted
    return values


class _Columns:
    """One kind's batch, a column per field, bucketed; computing it raises (TypeError,
    KeyError) for an event that is not shoal's own call_end, before anything is counted."""

    __slots__ = ("attempts", "cost", "duration", "durations", "genai", "n", "queue",
                 "queue_tally", "tokens", "ttft", "ttft_tally", "wasted")

    def __init__(self, datas: list[Mapping[str, Any]], genai: bool) -> None:
        col = _COLUMNS
        self.n = len(datas)
        self.queue = list(map(col["queue_s"], datas))
        self.queue_tally = _buckets(WAIT_BOUNDS, self.queue)
        self.attempts = sum(map(col["attempts"], datas))
        # input and output tokens, then the kinds most calls have none of (a column
        # only when one has some)
        self.tokens = [list(map(col[key], datas)) for key, _ in TOKEN_KEYS[:2]]
        self.tokens += [_rare(col[key], datas) for key, _ in TOKEN_KEYS[2:]]
        self.cost = list(map(col["cost_usd"], datas))
        self.wasted = _rare(col["wasted_cost_usd"], datas)
        self.durations = list(map(col["duration_s"], datas))
        self.duration = _buckets(DURATION_BOUNDS, self.durations)
        self.ttft = list(filter(None, map(col["ttft_s"], datas)))
        self.ttft_tally = _buckets(DURATION_BOUNDS, self.ttft)
        self.genai = [(_buckets(TOKEN_BOUNDS, values), values)
                      for values in self.tokens[:2]] if genai else []
        for values in (self.cost, *self.tokens[:2]):
            sum(values)  # a None or a text fails here, not half-way through counting

    def count(self, m: Metrics, k: CallKind) -> None:
        n = self.n
        if k.queue_wait is not None:
            _add(k.queue_wait, self.queue_tally, self.queue)
        if k.request is not None:
            k.request[0] += n
        elif k.error and k.channel:
            m.attempt_failed(k.channel, k.error, n)
        k.calls[0] += n
        k.attempts[0] += self.attempts
        for i, values in enumerate(self.tokens):
            if values and any(values):
                cell = k.token_cell(m, i)
                cell[0] = sum(values, cell[0])
        k.cost[0] = sum(self.cost, k.cost[0])
        if self.wasted:
            cell = k.wasted_cell(m)
            cell[0] = sum(self.wasted, cell[0])
        _add(k.latency, self.duration, self.durations)
        _add(k.genai_duration, self.duration, self.durations)
        if self.ttft:
            _add(k.ttft_counts(m), self.ttft_tally, self.ttft)
        if k.genai_tokens is not None:
            for counts, (tally, values) in zip(k.genai_tokens, self.genai, strict=True):
                _add(counts, tally, values)


def count_batch(m: Metrics, events: list[Event]) -> None:
    """Count ``events`` (call_end, in the order they happened) as :func:`count_one` would
    each, by columns where they are shoal's own (every field there, numbers)."""
    try:
        datas: list[Mapping[str, Any]] = list(map(_DATA, events))
        wheres, labels = list(map(_WHERE, events)), list(map(_LABELS, datas))
        n = len(events)
        # per kind of call, in the order kinds first appear: its first event, its data
        groups: dict[tuple[tuple[str, str], tuple[Any, ...]], tuple[Event, list[Any]]]
        if wheres.count(wheres[0]) == n and labels.count(labels[0]) == n:  # one kind
            groups = {(wheres[0], labels[0]): (events[0], datas)}
        else:
            keys = list(zip(wheres, labels, strict=True))
            groups = {}
            for key, e in zip(keys, events, strict=True):
                seen = groups.get(key)
                if seen is None:
                    groups[key] = (e, [e.data])
                else:
                    seen[1].append(e.data)
        work = []
        for first, group in groups.values():
            k = _kind(m, first)
            work.append((k, _Columns(group, k.genai_tokens is not None)))
    except (KeyError, TypeError):
        for e in events:
            count_one(m, e)
        return
    m.running_calls()[0] -= len(events)
    for k, columns in work:
        columns.count(m, k)
