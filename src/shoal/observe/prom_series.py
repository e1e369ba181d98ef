"""Counters, gauges and histograms kept as plain numbers, exposed as Prometheus families.

The event handlers run on the hot path, once per event: a ``prometheus_client`` metric
costs a lock per update and a validation per ``labels()`` call, about as much as the
model call's own bookkeeping. These series are a dict of floats per label tuple (and
running totals that a handler keeps and adds to in place, :meth:`Series.cell`),
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
    """A named metric with labels; :meth:`family` is its scrape-time view.

    ``values`` holds a float per label tuple; ``cells`` running totals that a hot
    handler keeps and adds to in place (:meth:`cell`: no label tuple hashed per update).
    The scrape adds a key's cell to its value."""

    __slots__ = ("cells", "doc", "labels", "name", "values")

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.values: dict[Key, float] = {}
        self.cells: dict[Key, list[float]] = {}

    def cell(self, key: Key) -> list[float]:
        """``key``'s running total, a one-item list to add to (``cell[0] += n``); made
        (at 0) on first ask, so the series has ``key`` from then on. For counters and
        gauges only ever added to: :meth:`remove` and ``Gauge.set`` drop it."""
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = [0.0]
            # ``values`` keeps every key in the order it first appeared (the scrape's
            # order): the cell's value is added to this 0 there
            self.values.setdefault(key, 0.0)
        return cell

    def remove(self, key: Key) -> None:
        self.values.pop(key, None)
        self.cells.pop(key, None)

    def snapshot(self) -> dict[Key, float]:
        """Every key's value, cells added: a copy (safe from the scrape's thread)."""
        out = self.values.copy()
        if self.cells:
            for key, cell in self.cells.copy().items():
                # a key's cell is made before its place in ``values``: a scrape between
                # the two puts it last, once
                out[key] = out.get(key, 0.0) + cell[0]
        return out

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
        for key, value in self.snapshot().items():
            out.add_metric(key, value)
        return out


class Gauge(Series):
    __slots__ = ()

    def add(self, key: Key, amount: float) -> None:
        values = self.values
        values[key] = values.get(key, 0.0) + amount

    def set(self, key: Key, value: float) -> None:
        self.cells.pop(key, None)
        self.values[key] = value

    def family(self) -> Metric:
        out = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in self.snapshot().items():
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

    def counts(self, key: Key) -> list[float]:
        """``key``'s live counts (made on first ask, so the series has ``key`` from then
        on), for a hot handler to count into as :meth:`observe` does: the count at
        ``bisect_left(bounds, value)`` plus one, the sum (last item) plus ``value``."""
        counts = self.values.get(key)
        if counts is None:
            counts = self.values[key] = [0.0] * (len(self.bounds) + 2)
        return counts

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
