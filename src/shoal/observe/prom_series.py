"""Counters, gauges and histograms kept as plain numbers, exposed as Prometheus families.

The event handlers run on the hot path, once per event: a ``prometheus_client`` metric
costs a lock per update and a validation per ``labels()`` call, about as much as the
model call's own bookkeeping. These series are a dict of floats per label tuple,
updated without a lock on the event loop's thread; a scrape (any thread) copies each
dict in one step and builds the families from the copy. The copy is ``d.copy()``, a C
loop that allocates no tracked object per entry: ``list(d.items())`` builds a tuple per
entry, and a garbage collection started by one of those can run Python code (a
finalizer) that lets the event loop's thread add a key mid-copy ("dictionary changed
size during iteration": seen once in CI on a scrape racing 3,000 new label values).
Histogram buckets are counted per bucket and made cumulative at the scrape, so
``_count`` always equals the ``+Inf`` bucket.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

__all__ = ["Counter", "Gauge", "Histogram", "Series"]

Key = tuple[str, ...]


class Series:
    """A named metric with labels; :meth:`family` is its scrape-time view."""

    __slots__ = ("doc", "labels", "name", "values")

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.values: dict[Key, float] = {}

    def remove(self, key: Key) -> None:
        self.values.pop(key, None)

    def family(self) -> Metric:
        raise NotImplementedError


class Counter(Series):
    """Only goes up. ``name`` without ``_total`` (the exposition adds it)."""

    __slots__ = ()

    def inc(self, key: Key, amount: float = 1.0) -> None:
        values = self.values
        values[key] = values.get(key, 0.0) + amount

    def family(self) -> Metric:
        out = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in self.values.copy().items():
            out.add_metric(key, value)
        return out


class Gauge(Series):
    __slots__ = ()

    def add(self, key: Key, amount: float) -> None:
        values = self.values
        values[key] = values.get(key, 0.0) + amount

    def set(self, key: Key, value: float) -> None:
        self.values[key] = value

    def family(self) -> Metric:
        out = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in self.values.copy().items():
            out.add_metric(key, value)
        return out


class Histogram:
    """Observations counted into ``buckets`` (upper bounds, ``le``), with their sum."""

    __slots__ = ("bounds", "doc", "labels", "les", "name", "values")

    def __init__(self, name: str, doc: str, labels: Sequence[str],
                 buckets: Sequence[float]) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.bounds = tuple(float(b) for b in buckets)
        self.les = [*(_le(b) for b in self.bounds), "+Inf"]
        # per label tuple: one count per bucket, one for +Inf, then the sum
        self.values: dict[Key, list[float]] = {}

    def observe(self, key: Key, value: float) -> None:
        counts = self.values.get(key)
        if counts is None:
            counts = self.values[key] = [0.0] * (len(self.bounds) + 2)
        counts[bisect_left(self.bounds, value)] += 1
        counts[-1] += value

    def family(self) -> Metric:
        out = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, counts in self.values.copy().items():
            snap = counts[:]
            cumulative = list(accumulate(snap[:-1]))
            out.add_metric(list(key), list(zip(self.les, cumulative, strict=True)),
                           sum_value=snap[-1])
        return out


def _le(bound: float) -> str:
    """Bucket bounds as prometheus_client writes them (``1.0``, ``0.01``, ``1.048576e+06``)."""
    from prometheus_client.utils import floatToGoString

    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]  # untyped upstream


def families(series: Sequence[Series | Histogram]) -> Iterator[Metric]:
    for s in series:
        yield s.family()
