"""docs/observe.md lists every metric the exporter serves, and every query of
docs/grafana-dashboard.json names only metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from shoal.clock import VirtualClock
from shoal.observe.events import EventBus
from shoal.observe.prometheus import PrometheusExporter

DOCS = Path(__file__).resolve().parents[2] / "docs"
METRIC = re.compile(r"\b((?:shoal|gen_ai)_[a-z_]+)")
SUFFIXES = ("_bucket", "_sum", "_count")


def exported() -> dict[str, str]:
    """Every family name (as exposed) → its type, after one event of each kind."""
    bus = EventBus(VirtualClock())
    exporter = PrometheusExporter(bus)
    exporter.subscribe()
    for kind in ("admit", "wait", "retry", "failover", "call_start", "agent_start",
                 "agent_end", "tool_start", "tool_end", "guard", "budget", "journal",
                 "run_start", "step_start", "step_end", "run_end"):
        bus.emit(kind, channel="c", model="m", run_id="r", step="s", agent="a", tool="t",
                 status="ok", error="RateLimited", queued=1, turns=1, duration_s=1.0)
    bus.publish("breaker", {"to": "open"}, channel="c")
    bus.publish("limit_change", {"from": 1, "to": 2}, channel="c")
    bus.emit("call_end", channel="c", model="m", agent="a", status="ok", error_type="",
             provider="openai", served_model="m", attempts=1, duration_s=0.1, ttft_s=0.05,
             cost_usd=0.1, wasted_cost_usd=0.01, input_tokens=1, output_tokens=1,
             cached_input_tokens=1, cache_write_tokens=1, reasoning_tokens=1)
    out = {}
    for family in text_string_to_metric_families(exporter.text()):
        name = family.name + ("_total" if family.type == "counter" else "")
        out[name] = family.type
    return out


def test_the_docs_list_every_metric_with_its_type() -> None:
    text = (DOCS / "observe.md").read_text("utf-8")
    rows = dict(re.findall(r"^\| `((?:shoal|gen_ai)_[a-z_]+)` \| (\w+) \|", text, re.M))
    assert rows == exported()


def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text("utf-8"))
    names = set(exported())
    used = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = re.sub(r"by \([^)]*\)|\{[^}]*\}", "", target["expr"])  # labels out
            for name in METRIC.findall(expr):
                base = next((name[:-len(s)] for s in SUFFIXES if name.endswith(s)
                             and name[:-len(s)] in names), name)
                assert base in names, f"panel {panel['title']!r}: unknown metric {name}"
                used.add(base)
    assert {"shoal_tokens_total", "shoal_cost_usd_total", "shoal_channel_in_flight",
            "shoal_channel_breaker_state", "gen_ai_client_token_usage"} <= used
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
