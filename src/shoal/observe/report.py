"""The run report: one self-contained HTML file for a journaled run.

    shoal show rep-001 --html report.html

    path = await write_report("sqlite:///.shoal/runs.db", "rep-001", "report.html")

It shows the flow's graph coloured by step status, a timeline of steps and model calls
(limiter wait, failed attempts and backoff, provider time), tokens and cost by agent
and model with what prompt caching saved, the errors with their messages, and what a
resume would replay and redo. No network: the stylesheet, the script and the data are
inlined, and a Content-Security-Policy forbids every fetch. Journaled text is escaped
(HTML) or handed to the script as JSON and set with ``textContent``; error texts pass
through :func:`shoal.secrets.redact`.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.clock import RealClock
from shoal.observe.report_assets import CSS, JS
from shoal.observe.report_data import ReportData, UsageRow, gather
from shoal.types import Usage

if TYPE_CHECKING:
    from shoal.config import Config
    from shoal.stores.base import Store

__all__ = ["render", "write_report"]

_CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "img-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'")
_STATUSES = ("succeeded", "running", "failed", "cancelled", "interrupted", "skipped",
             "not_run")
_OPEN_STEPS = 60  # the step table starts folded above this many rows


async def write_report(store: Store | str, run_id: str, path: str | Path, *,
                       prices: Config | None = None) -> Path:
    """Write the report of ``run_id`` to ``path`` (replaced whole, never half-written).

    ``prices``: the config whose catalog prices the cache savings (default: the config
    the run recorded, else ``$SHOAL_CONFIG`` or ``./shoal.toml``, else shoal's catalog).
    Raises ``RunNotFound`` / ``CorruptRecord`` as ``shoal show`` does, ``OSError`` when
    the file cannot be written."""
    data = await gather(store, run_id, prices=prices)
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(render(data), "utf-8")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


# -- formatting ------------------------------------------------------------------------


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _usd(x: float | None) -> str:
    return "?" if x is None else f"${x:.6f}"


def _secs(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms" if s >= 0.01 else f"{s * 1000:.1f} ms"
    return f"{s:.2f} s" if s < 120 else f"{s / 60:.1f} min"


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _badge(status: str) -> str:
    return f'<span class="badge st-{_e(status)}">{_e(status.replace("_", " "))}</span>'


def _preview(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                           default=str)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _script_json(value: Any) -> str:
    """JSON safe inside ``<script>``: no ``</script>``, ``<!--`` or ``&`` can form."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


# -- the page --------------------------------------------------------------------------


def render(data: ReportData) -> str:
    """The report as one HTML document (no external resources)."""
    run = data.plan.run
    return "\n".join([
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="shoal show --html">',
        f"<title>shoal run {_e(run.run_id)} · {_e(run.flow)} · {_e(run.status)}</title>",
        f"<style>{CSS}</style></head>",
        f'<body data-run="{_e(run.run_id)}" data-status="{_e(run.status)}">',
        _header(data),
        '<p id="render-error" class="errors" hidden></p>',
        "<noscript><p>The graph and the timeline are drawn by the page's script; the "
        "tables below hold the same numbers.</p></noscript>",
        _dag_section(data),
        _timeline_section(data),
        _usage_section(data),
        _errors_section(data),
        _resume_section(data),
        _steps_section(data),
        f'<script type="application/json" id="shoal-data">{_script_json(_payload(data))}'
        "</script>",
        f"<script>{JS}</script>",
        "</body></html>",
        "",
    ])


def _header(data: ReportData) -> str:
    run = data.plan.run
    done = sum(1 for s in data.steps if s.status == "succeeded")
    failed = sum(1 for s in data.steps if s.status == "failed")
    queue = sum(c.queue_s for c in data.calls)
    retry = sum(c.retry_s for c in data.calls)
    missing = data.prices_missing
    saved_note = f" (no price for {', '.join(missing)})" if missing else ""
    # Some items' spend is gone: the run's totals are the others', a floor, not the sum.
    floor = "at least " if data.plan.unknown_spend else ""
    kpis = [
        ("status", _badge(run.status)),
        ("steps", f"{done}/{len(data.steps)} done" + (f", {failed} failed" if failed else "")),
        ("model calls", str(len(data.calls))),
        ("tokens", f"{floor}{run.tokens:,}"),
        ("cost", _e(floor + _usd(run.cost_usd))),
        ("cached tokens", f"{data.cached_tokens:,}"),
        ("saved by caching", _e(_usd(data.saved_usd)) + _e(saved_note)),
        ("span", _e(_secs(data.end - data.origin))),
        ("limiter wait", _e(_secs(queue))),
        ("retries & backoff", _e(_secs(retry))),
    ]
    partial = {"tokens", "cost"} if floor else set()
    boxes = "".join(f'<div class="kpi" data-kpi="{_e(k)}"'
                    + (' data-spend="partial"' if k in partial else "")
                    + f"><span>{_e(k)}</span><b>{v}</b></div>" for k, v in kpis)
    lines = [
        f"<header><h1>run <code>{_e(run.run_id)}</code> · flow <code>{_e(run.flow)}</code> "
        f"{_badge(run.status)}</h1>",
        f'<div class="muted">created {_e(_when(run.created_at))} · last write '
        f"{_e(_when(run.updated_at))} · report generated "
        f"{_e(_when(RealClock().wall()))}</div>",
        f'<div class="muted">input: <span class="mono" id="run-input">'
        f"{_e(_preview(run.input))}</span></div>",
    ]
    if data.plan.target:
        lines.append(f'<div class="muted">target: <code>{_e(data.plan.target)}</code></div>')
    lines.append(f'<div class="summary">{boxes}</div>')
    if floor:
        lines.append(_unknown_spend_note(data))
    lines.append("</header>")
    return "\n".join(lines)


def _whose(many: bool) -> str:
    return "items'" if many else "item's"


_NAMED = 10  # items named in the note on unknown spend; the rest counted


def _unknown_spend_note(data: ReportData) -> str:
    """Under the totals of a batch some of whose items' tokens and cost are gone (recorded
    by an older shoal, their journals deleted since): the totals are a floor."""
    gone = data.plan.unknown_spend
    run = data.plan.run
    many = len(gone) > 1
    names = ", ".join(f"<code>{_e(g)}</code>" for g in gone[:_NAMED])
    more = f" and {len(gone) - _NAMED} more" if len(gone) > _NAMED else ""
    return (f'<p class="muted" id="spend-unknown" data-items="{len(gone)}">tokens and '
            f"cost: at least {run.tokens:,} tokens, at least {_e(_usd(run.cost_usd))}; "
            f"{len(gone)} {_whose(many)} spend unknown: "
            f"{'their outcomes were' if many else 'its outcome was'} recorded without it "
            f"and {'their journals are' if many else 'its journal is'} gone ({names}"
            f"{more}).</p>")


def _legend(items: list[tuple[str, str]]) -> str:
    return '<div class="legend">' + "".join(
        f'<span><i style="background:{c}"></i>{_e(label)}</span>' for label, c in items
    ) + "</div>"


_STATUS_CSS = {"succeeded": "var(--ok)", "running": "var(--run)", "failed": "var(--fail)",
               "cancelled": "var(--cancel)", "interrupted": "var(--int)",
               "skipped": "var(--skip)", "not_run": "var(--notrun)"}


def _dag_section(data: ReportData) -> str:
    present = {n.status for n in data.nodes}
    legend = _legend([(s.replace("_", " "), _STATUS_CSS[s]) for s in _STATUSES
                      if s in present])
    return (
        f'<section id="dag" data-steps="{len(data.nodes)}"><h2>Flow</h2>{legend}'
        '<p class="muted">Steps by dependency layer, coloured by status. A dashed outline: '
        "a resume runs it again (orange dots: again only if its inputs come out "
        "different). Click a step to find it on the timeline.</p>"
        '<div class="scroll"><svg id="dag-svg" xmlns="http://www.w3.org/2000/svg" '
        'role="img" aria-label="the flow\'s steps and their dependencies"></svg></div>'
        "</section>")


def _timeline_section(data: ReportData) -> str:
    legend = _legend([("step (by status)", "var(--skip)"), ("limiter wait", "var(--queue)"),
                      ("failed attempts & backoff", "var(--retry)"),
                      ("provider", "var(--prov)")])
    untimed = sum(1 for c in data.calls if not c.timed)
    note = (f" {untimed} call(s) were journaled without the Router's timings (older "
            "records): they show provider time only." if untimed else "")
    return (
        f'<section id="timeline" data-expected-calls="{len(data.calls)}"><h2>Timeline</h2>'
        f"{legend}<p class=\"muted\">Seconds from the run's creation. Each model call is "
        "drawn as its wait in the channel's limiter, then its failed attempts and backoff, "
        f"then the request that answered (hover for numbers).{_e(note)}</p>"
        '<div class="scroll"><svg id="timeline-svg" xmlns="http://www.w3.org/2000/svg" '
        'role="img" aria-label="timeline of steps and model calls"></svg></div></section>')


_USAGE_HEAD = ("<th class=n>calls</th><th class=n>input</th><th class=n>cached read</th>"
               "<th class=n>cache write</th><th class=n>output</th><th class=n>reasoning</th>"
               "<th class=n>cost</th><th class=n>saved by cache</th></tr>")


def _usage_cells(calls: int, u: Usage, cost: float, saved: float | None) -> str:
    return (f"<td class=n>{calls}</td><td class=n>{u.input_tokens:,}</td>"
            f"<td class=n>{u.cached_input_tokens:,}</td><td class=n>{u.cache_write_tokens:,}</td>"
            f"<td class=n>{u.output_tokens:,}</td><td class=n>{u.reasoning_tokens:,}</td>"
            f"<td class=n>{_usd(cost)}</td><td class=n>{_usd(saved)}</td>")


def _usage_section(data: ReportData) -> str:
    if not data.usage:
        return ('<section id="usage"><h2>Tokens and cost by agent and model</h2>'
                "<p>No model calls journaled.</p></section>")
    by_model: dict[str, UsageRow] = {}
    for r in data.usage:
        m = by_model.setdefault(r.model, UsageRow("", r.model))
        m.calls += r.calls
        m.usage = m.usage + r.usage
        m.cost_usd += r.cost_usd
        m.saved_usd = None if m.saved_usd is None or r.saved_usd is None \
            else m.saved_usd + r.saved_usd
    total = sum((r.usage for r in data.usage), Usage())
    total_row = ('<tr class="total"><td>all</td>{pad}'
                 + _usage_cells(len(data.calls), total, sum(r.cost_usd for r in data.usage),
                                data.saved_usd) + "</tr>")
    models = "".join(
        f'<tr data-model="{_e(m.model)}"><td>{_e(m.model)}</td>'
        + _usage_cells(m.calls, m.usage, m.cost_usd, m.saved_usd) + "</tr>"
        for m in sorted(by_model.values(), key=lambda m: -m.cost_usd))
    agents = "".join(
        f'<tr data-agent="{_e(r.agent)}" data-model="{_e(r.model)}"><td>{_e(r.agent)}</td>'
        f"<td>{_e(r.model)}</td>" + _usage_cells(r.calls, r.usage, r.cost_usd, r.saved_usd)
        + "</tr>" for r in data.usage)
    opened = " open" if len(data.usage) <= _OPEN_STEPS else ""
    missing = data.prices_missing
    note = ("<p class=\"muted\">Saved by cache: what the cached prompt tokens would have cost "
            "at the model's input price, minus what they cost (cache reads at their price; "
            "a cache write's premium counts against)."
            + (f" No catalog price for {_e(', '.join(missing))}: its savings show as ?."
               if missing else "") + "</p>")
    return (
        '<section id="usage"><h2>Tokens and cost by agent and model</h2>'
        f'<table id="usage-by-model"><tr><th>model</th>{_USAGE_HEAD}{models}'
        f"{total_row.format(pad='')}</table>"
        f"<details{opened}><summary>by agent and model ({len(data.usage)} rows)</summary>"
        f'<table id="usage-by-agent"><tr><th>agent</th><th>model</th>{_USAGE_HEAD}{agents}'
        f"{total_row.format(pad='<td></td>')}</table></details>{note}</section>")


def _errors_section(data: ReportData) -> str:
    if not data.errors:
        return '<section id="errors" data-count="0"><h2>Errors</h2><p>No errors.</p></section>'
    items = "".join(
        f'<li data-where="{_e(e.where)}"><b>{_e(e.where)}</b> {_badge(e.status)}'
        f"<pre>{_e(e.message)}</pre></li>" for e in data.errors)
    return (f'<section id="errors" data-count="{len(data.errors)}"><h2>Errors</h2>'
            f'<ul class="errors">{items}</ul></section>')


def _names(names: list[str]) -> str:
    return ", ".join(f"<code>{_e(n)}</code>" for n in names) or "none"


def _resume_section(data: ReportData) -> str:
    p = data.plan
    if not p.redo:
        body = (f"<p>Nothing to redo: all {len(p.replay)} step(s) replay from the journal "
                "with zero model calls.</p>")
    else:
        body = (
            f'<ul><li>Replays with zero model calls ({len(p.replay)}): {_names(p.replay)}</li>'
            f'<li id="resume-redo">Runs again ({len(p.redo)}): {_names(p.redo)}</li>'
            + (f"<li>Journaled model turns inside them that replay: {p.turns_to_replay}</li>"
               if p.turns_to_replay else "")
            + (f"<li>Also run again if their inputs come out different: "
               f"{_names(p.stale_if_changed)}</li>" if p.stale_if_changed else "")
            + "</ul>"
            + f"<p class=\"muted\">Resume with <code>shoal resume {_e(p.run.run_id)}</code>"
            + ("" if p.target else " --target module:object") + ".</p>")
    return (f'<section id="resume" data-redo="{_e(json.dumps(p.redo))}"><h2>What a resume '
            f"would do</h2>{body}</section>")


def _steps_section(data: ReportData) -> str:
    origin = data.origin
    rows = []
    for v in data.steps:
        start = "-" if v.started_at is None else f"+{v.started_at - origin:.2f}s"
        rows.append(
            f'<tr data-step="{_e(v.step_id)}" data-status="{_e(v.status)}">'
            f"<td>{_e(v.step_id)}</td><td>{_badge(v.status)}</td><td class=n>{v.attempt}</td>"
            f"<td class=n>{_e(start)}</td><td class=n>{_e(_secs(v.duration_s))}</td>"
            f"<td class=n>{v.turns}</td>"
            + (f"<td class=n>{v.tokens:,}</td><td class=n>{_usd(v.cost_usd)}</td>"
               if v.spend_known else "<td class=n>unknown</td><td class=n>unknown</td>")
            + f"<td>{_e(v.model or '-')}</td></tr>")
    opened = " open" if len(rows) <= _OPEN_STEPS else ""
    return (
        f'<section id="steps"><h2>Steps</h2><details{opened}><summary>{len(rows)} step '
        "record(s)</summary><table><tr><th>step</th><th>status</th><th class=n>try</th>"
        "<th class=n>start</th><th class=n>took</th><th class=n>turns</th>"
        "<th class=n>tokens</th><th class=n>cost</th><th>model</th></tr>"
        f"{''.join(rows)}</table></details></section>")


_STEP_KEYS = ("id", "status", "start", "end", "attempt", "tokens", "cost")
_CALL_KEYS = ("step", "turn", "model", "served", "channel", "start", "end", "queue", "retry",
              "latency", "attempts", "timed", "input", "cached", "output", "cost", "tools")


def _payload(data: ReportData) -> dict[str, Any]:
    """What the script draws from, compact (a 500-step run with 1,000 calls: ~200 kB):
    steps and calls as rows under their column names, times in seconds from the run's
    creation to 0.1 ms, dollars to 6 significant digits."""
    origin = data.origin

    def t(x: float | None) -> float | None:
        return None if x is None else round(x - origin, 4)

    return {
        "origin": 0.0, "end": t(data.end),
        "nodes": [{"name": n.name, "status": n.status, "after": list(n.after),
                   "layer": n.layer, "resume": n.resume, "items": n.items,
                   "items_failed": n.items_failed, "tokens": n.tokens,
                   "cost": _usd_num(n.cost_usd), "model": n.model, "error": n.error,
                   "spend_unknown": n.spend_unknown}
                  for n in data.nodes],
        # a step's tokens and cost: null when unknown (StepView.spend_known)
        "steps": {"keys": _STEP_KEYS, "rows": [
            [v.step_id, v.status, t(v.started_at), t(v.finished_at), v.attempt,
             v.tokens if v.spend_known else None,
             _usd_num(v.cost_usd) if v.spend_known else None] for v in data.steps]},
        "calls": {"keys": _CALL_KEYS, "rows": [
            [c.step, c.turn, c.model, c.served_model if c.served_model != c.model else "",
             c.channel, t(c.started_at), t(c.finished_at), round(c.queue_s, 4),
             round(c.retry_s, 4), round(c.latency_s, 4), c.attempts, c.timed,
             c.usage.input_tokens, c.usage.cached_input_tokens, c.usage.output_tokens,
             _usd_num(c.cost_usd), ", ".join(c.tool_calls)] for c in data.calls]},
    }


def _usd_num(x: float) -> float:
    return float(f"{x:.6g}")
