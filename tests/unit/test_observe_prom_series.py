"""Series kept as plain numbers: a running total taken with ``cell`` adds to the value
that ``inc``/``add`` keep for the same labels at the scrape; ``remove`` and ``set``
drop it; a histogram's ``counts`` are the live counts ``observe`` writes."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from shoal.observe.prom_series import Counter, Gauge, Histogram, Series


class _Families(Collector):
    def __init__(self, *series: Series | Histogram) -> None:
        self.series = series

    def collect(self) -> Iterator[Metric]:
        for s in self.series:
            yield s.family()


def _scrape(*series: Series | Histogram) -> dict[tuple[str, tuple[str, ...]], float]:
    registry = CollectorRegistry()
    registry.register(_Families(*series))
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.values())))] = s.value
    return out


def test_a_cell_adds_to_the_counted_value_of_its_labels() -> None:
    c = Counter("things", "Things.", ["kind"])
    cell = c.cell(("a",))
    assert c.cell(("a",)) is cell  # one running total per label tuple
    assert _scrape(c) == {("things_total", ("a",)): 0.0}  # present from the first ask
    cell[0] += 2
    c.inc(("a",), 3)
    c.inc(("b",))
    assert _scrape(c) == {("things_total", ("a",)): 5.0, ("things_total", ("b",)): 1.0}
    c.remove(("a",))
    assert _scrape(c) == {("things_total", ("b",)): 1.0}


def test_a_gauge_set_replaces_a_cell() -> None:
    g = Gauge("level", "Level.", ["what"])
    g.cell(("x",))[0] += 4.0
    g.add(("x",), 1.0)
    assert _scrape(g) == {("level", ("x",)): 5.0}
    g.set(("x",), 2.0)
    assert _scrape(g) == {("level", ("x",)): 2.0}


def test_histogram_counts_are_what_observe_writes() -> None:
    h = Histogram("wait", "Wait.", ["ch"], (0.1, 1.0))
    counts = h.counts(("c",))
    counts[0] += 1  # what observe(("c",), 0.0) does for a value in the first bucket
    counts[-1] += 0.0
    h.observe(("c",), 0.5)
    assert h.counts(("c",)) is counts
    got = _scrape(h)
    assert got[("wait_count", ("c",))] == 2
    assert got[("wait_bucket", ("0.1", "c"))] == 1
    assert got[("wait_sum", ("c",))] == 0.5
