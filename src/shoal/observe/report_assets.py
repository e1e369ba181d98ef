"""The run report's stylesheet and script, inlined into every report (no network: the
file opens the same on a laptop in a plane).

The script reads the run's data from ``<script type="application/json"
id="shoal-data">`` and draws two SVG pictures with DOM calls only (``textContent``, never
``innerHTML``, so no journaled text is ever parsed as markup):

- ``#dag-svg``: the flow's steps laid out by topological layer (columns, left to right),
  each node a ``g.dag-node`` with ``id="dag-node-<i>"``, ``data-step``, ``data-status``
  and ``data-resume``; edges ``path.dag-edge``;
- ``#timeline-svg``: one row per journaled step (``rect.step-bar``, ``data-step``,
  ``data-status``), its model calls on it (``g.call`` with ``rect.seg`` parts
  ``data-kind="queue"`` limiter wait, ``"retry"`` failed attempts and backoff,
  ``"provider"`` the answering request).

When done it sets ``data-rendered="1"`` on ``<body>`` and the counts drawn on each
section (``data-nodes``, ``data-edges``, ``data-bars``, ``data-calls``), which the
browser test reads.
"""

from __future__ import annotations

__all__ = ["CSS", "JS"]

CSS = """
:root { --ok:#2e9d57; --fail:#d63c3c; --run:#1f8fbf; --cancel:#a347ba; --int:#e0a21b;
  --skip:#9aa3ad; --notrun:#c9ced4; --queue:#f0b429; --retry:#e5484d; --prov:#3b82f6;
  --ink:#1d232b; --muted:#5d6875; --line:#dfe3e8; --bg:#ffffff; --panel:#f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); background: var(--bg); margin: 0; padding: 24px 32px; }
h1 { font-size: 20px; margin: 0 0 6px; }
h2 { font-size: 16px; margin: 28px 0 10px; border-bottom: 1px solid var(--line);
  padding-bottom: 4px; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  font-size: 12.5px; }
.muted { color: var(--muted); }
.summary { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.kpi { background: var(--panel); border: 1px solid var(--line); border-radius: 6px;
  padding: 6px 12px; min-width: 110px; }
.kpi > b { display: block; font-size: 16px; }
.kpi > span { color: var(--muted); font-size: 12px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff;
  font-size: 12px; font-weight: 600; vertical-align: middle; }
.st-succeeded { background: var(--ok); } .st-failed { background: var(--fail); }
.st-running { background: var(--run); } .st-cancelled { background: var(--cancel); }
.st-interrupted { background: var(--int); } .st-skipped { background: var(--skip); }
.st-not_run { background: var(--notrun); color: var(--ink); }
table { border-collapse: collapse; margin: 6px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { background: var(--panel); font-weight: 600; font-size: 13px; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 600; border-top: 2px solid var(--line); }
.scroll { overflow: auto; max-height: 640px; border: 1px solid var(--line); border-radius: 6px;
  background: var(--bg); }
.legend { display: flex; flex-wrap: wrap; gap: 14px; margin: 6px 0; font-size: 12px;
  color: var(--muted); }
.legend i { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
  margin-right: 4px; vertical-align: -2px; }
.errors li { margin-bottom: 8px; }
.errors pre { white-space: pre-wrap; word-break: break-word; margin: 4px 0 0;
  background: #fff5f5; border-left: 3px solid var(--fail); padding: 6px 10px; }
svg text { font-family: system-ui, sans-serif; }
.dag-node rect { stroke: rgba(0,0,0,.25); stroke-width: 1; }
.dag-node[data-resume="redo"] rect { stroke: var(--ink); stroke-width: 2;
  stroke-dasharray: 5 3; }
.dag-node[data-resume="stale"] rect { stroke: var(--int); stroke-width: 2;
  stroke-dasharray: 2 2; }
.dag-node text { fill: #fff; font-size: 12px; pointer-events: none; }
.dag-node[data-status="not_run"] text, .dag-node[data-status="skipped"] text { fill: var(--ink); }
.dag-node { cursor: pointer; }
.dag-edge { fill: none; stroke: #8a949e; stroke-width: 1.3; }
.tl-label { font-size: 11.5px; fill: var(--ink); }
.tl-axis { stroke: var(--line); } .tl-tick { font-size: 10.5px; fill: var(--muted); }
.step-bar { opacity: .28; } .step-bar.open { opacity: .18; }
.tl-row.hl .step-bar { opacity: .5; }
.seg-queue { fill: var(--queue); } .seg-retry { fill: var(--retry); }
.seg-provider { fill: var(--prov); }
"""

JS = r"""
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var COLOURS = { succeeded: "#2e9d57", failed: "#d63c3c", running: "#1f8fbf",
    cancelled: "#a347ba", interrupted: "#e0a21b", skipped: "#9aa3ad", not_run: "#c9ced4" };
  var data = JSON.parse(document.getElementById("shoal-data").textContent);
  function objects(table) {  // {keys, rows} -> [{key: value}]
    return table.rows.map(function (row) {
      var o = {}; table.keys.forEach(function (k, i) { o[k] = row[i]; }); return o;
    });
  }
  data.steps = objects(data.steps); data.calls = objects(data.calls);

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var k in attrs) { if (attrs[k] !== null && attrs[k] !== undefined) {
      node.setAttribute(k, String(attrs[k])); } }
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function text(parent, attrs, value) {
    var t = el("text", attrs, parent); t.textContent = value; return t;
  }
  function title(parent, value) { el("title", {}, parent).textContent = value; }
  function secs(s) {
    if (s === null || s === undefined) { return "-"; }
    if (s < 1) { return (s * 1000).toFixed(s < 0.01 ? 1 : 0) + " ms"; }
    if (s < 120) { return s.toFixed(2) + " s"; }
    return (s / 60).toFixed(1) + " min";
  }
  function usd(x) { return "$" + (x || 0).toFixed(6); }
  // a step's or node's tokens and cost: null when unknown; a partial sum is "at least"
  function spent(tokens, cost, unknown) {
    if (tokens === null || tokens === undefined) { return "tokens and cost unknown"; }
    var floor = unknown ? "at least " : "";
    return floor + tokens + " tok \u00b7 " + floor + usd(cost)
      + (unknown ? " (" + unknown + " item(s)' spend unknown)" : "");
  }
  function clip(s, n) { return s.length > n ? s.slice(0, n - 1) + "\u2026" : s; }

  // -- the graph: columns by topological layer, rows ordered by their parents' rows ----
  function drawDag() {
    var svg = document.getElementById("dag-svg");
    var nodes = data.nodes, byName = {}, cols = [];
    nodes.forEach(function (n, i) {
      n.index = i; byName[n.name] = n;
      (cols[n.layer] = cols[n.layer] || []).push(n);
    });
    cols = cols.filter(function (c) { return c; });
    cols.forEach(function (col, c) {  // barycentre ordering: fewer crossings
      if (c > 0) {
        col.forEach(function (n) {
          var ys = n.after.map(function (d) { return byName[d] ? byName[d].row : 0; });
          n.key = ys.length ? ys.reduce(function (a, b) { return a + b; }, 0) / ys.length
            : n.index;
        });
        col.sort(function (a, b) { return a.key - b.key || a.index - b.index; });
      }
      col.forEach(function (n, r) { n.row = r; });
    });
    var W = 184, H = 40, GX = 70, GY = 16, PAD = 12;
    var rows = Math.max.apply(null, cols.map(function (c) { return c.length; }).concat([1]));
    var width = PAD * 2 + cols.length * W + Math.max(0, cols.length - 1) * GX;
    var height = PAD * 2 + rows * H + (rows - 1) * GY;
    svg.setAttribute("width", width); svg.setAttribute("height", height);
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    var defs = el("defs", {}, svg);
    var marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, defs);
    el("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8a949e" }, marker);
    cols.forEach(function (col, c) {
      var offset = (rows - col.length) * (H + GY) / 2;
      col.forEach(function (n) {
        n.x = PAD + c * (W + GX); n.y = PAD + offset + n.row * (H + GY);
      });
    });
    var edges = el("g", { "class": "dag-edges" }, svg), edgeCount = 0;
    nodes.forEach(function (n) {
      n.after.forEach(function (d) {
        var p = byName[d]; if (!p) { return; }
        var x1 = p.x + W, y1 = p.y + H / 2, x2 = n.x - 2, y2 = n.y + H / 2, mx = (x1 + x2) / 2;
        el("path", { "class": "dag-edge", "data-from": p.name, "data-to": n.name,
          d: "M" + x1 + "," + y1 + " C" + mx + "," + y1 + " " + mx + "," + y2 + " " + x2 + ","
            + y2, "marker-end": "url(#arrow)" }, edges);
        edgeCount++;
      });
    });
    nodes.forEach(function (n) {
      var g = el("g", { "class": "dag-node", id: "dag-node-" + n.index, "data-step": n.name,
        "data-status": n.status, "data-resume": n.resume,
        transform: "translate(" + n.x + "," + n.y + ")" }, svg);
      el("rect", { width: W, height: H, rx: 6, fill: COLOURS[n.status] || "#888" }, g);
      text(g, { x: 10, y: 16, "font-weight": 600 }, clip(n.name, 24));
      var sub = n.status.replace("_", " ") + (n.items ? " \u00b7 " + n.items + " items" : "")
        + (n.tokens ? " \u00b7 " + (n.spend_unknown ? "\u2265" : "") + n.tokens + " tok" : "");
      text(g, { x: 10, y: 31, "font-size": 11 }, clip(sub, 27));
      title(g, n.name + "\n" + n.status + (n.model ? "\nmodel: " + n.model : "")
        + "\ntokens: " + spent(n.tokens, n.cost, n.spend_unknown)
        + (n.items ? "\nitems: " + n.items + " (" + n.items_failed + " failed)" : "")
        + "\nresume: " + n.resume + (n.error ? "\n" + clip(n.error, 400) : ""));
      g.addEventListener("click", function () { highlight(n.name); });
    });
    var section = document.getElementById("dag");
    section.setAttribute("data-nodes", String(nodes.length));
    section.setAttribute("data-edges", String(edgeCount));
  }

  // -- the timeline: a row per step; its calls as queue | retries | provider ---------
  function niceStep(span, ticks) {
    var raw = span / ticks, p = Math.pow(10, Math.floor(Math.log10(raw)));
    var m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
  }
  function drawTimeline() {
    var svg = document.getElementById("timeline-svg");
    var span = Math.max(data.end - data.origin, 1e-3);
    var rows = data.steps.slice(), byId = {};
    rows.forEach(function (s, i) { s.index = i; byId[s.id] = s; s.calls = []; });
    data.calls.forEach(function (c) {
      var row = byId[c.step] || byId[c.step.split("/")[0]];
      if (!row) {
        row = { id: c.step, status: "succeeded", start: null, end: null, calls: [],
          index: rows.length, attempt: 1, tokens: 0, cost: 0 };
        rows.push(row); byId[c.step] = row;
      }
      row.calls.push(c);
    });
    rows.forEach(function (r) {
      var first = r.start;
      r.calls.forEach(function (c) { if (first === null || c.start < first) { first = c.start; } });
      r.order = first === null ? Infinity : first;
    });
    rows.sort(function (a, b) { return a.order - b.order || a.index - b.index; });
    var LABEL = 190, RH = 20, TOP = 26, host = document.getElementById("timeline");
    var plot = Math.max(560, Math.min(1600, (host.clientWidth || 1100) - LABEL - 30));
    var width = LABEL + plot + 70, height = TOP + rows.length * RH + 8;
    svg.setAttribute("width", width); svg.setAttribute("height", height);
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    function X(t) { return LABEL + (t - data.origin) / span * plot; }
    var step = niceStep(span, 8), axis = el("g", { "class": "tl-axis-g" }, svg);
    for (var t = 0; t <= span + 1e-9; t += step) {
      var x = LABEL + t / span * plot;
      el("line", { "class": "tl-axis", x1: x, x2: x, y1: TOP - 6, y2: height }, axis);
      text(axis, { "class": "tl-tick", x: x + 2, y: TOP - 10 }, "+" + secs(t));
    }
    var bars = 0, calls = 0;
    rows.forEach(function (r, i) {
      var y = TOP + i * RH;
      var g = el("g", { "class": "tl-row", "data-step": r.id, "data-status": r.status }, svg);
      text(g, { "class": "tl-label", x: 4, y: y + 14 }, clip(r.id, 28));
      var start = r.start, end = r.end, open = false;
      r.calls.forEach(function (c) {
        if (c.start !== null && (start === null || c.start < start)) { start = c.start; }
        if (c.end !== null && (end === null || c.end > end)) { end = c.end; }
      });
      if (start !== null) {
        if (r.end === null && (r.status === "running" || r.status === "interrupted")) {
          end = data.end; open = true;
        }
        if (end === null) { end = start; }
        var bar = el("rect", { "class": "step-bar" + (open ? " open" : ""), "data-step": r.id,
          "data-status": r.status, x: X(start), y: y + 2, height: RH - 4, rx: 3,
          width: Math.max(2, X(end) - X(start)), fill: COLOURS[r.status] || "#888" }, g);
        title(bar, r.id + " \u00b7 " + r.status + " \u00b7 " + secs(end - start)
          + (r.attempt > 1 ? " \u00b7 attempt " + r.attempt : "")
          + " \u00b7 " + spent(r.tokens, r.cost, 0));
        bars++;
      }
      r.calls.forEach(function (c) {
        if (c.end === null) { return; }
        var cg = el("g", { "class": "call", "data-step": c.step, "data-turn": c.turn,
          "data-model": c.model }, g);
        var x0 = c.end - c.queue - c.retry - c.latency, parts = [
          ["queue", c.queue], ["retry", c.retry], ["provider", c.latency]];
        parts.forEach(function (p) {
          if (p[1] <= 0 && p[0] !== "provider") { return; }
          el("rect", { "class": "seg seg-" + p[0], "data-kind": p[0], x: X(x0), y: y + 6,
            height: RH - 12, width: Math.max(1, X(x0 + p[1]) - X(x0)) }, cg);
          x0 += p[1];
        });
        title(cg, c.step + " turn " + c.turn + " \u00b7 " + c.model
          + (c.served && c.served !== c.model ? " (" + c.served + ")" : "")
          + (c.channel ? " via " + c.channel : "")
          + (c.timed ? "\nlimiter wait " + secs(c.queue) + " \u00b7 retries " + secs(c.retry)
            + " (" + c.attempts + " attempt" + (c.attempts === 1 ? "" : "s") + ")"
            : "\n(no Router timings journaled)")
          + "\nprovider " + secs(c.latency) + "\ntokens in " + c.input + " (cached "
          + c.cached + ") out " + c.output + " \u00b7 " + usd(c.cost)
          + (c.tools ? "\ncalled tools: " + clip(c.tools, 200) : ""));
        calls++;
      });
    });
    var section = document.getElementById("timeline");
    section.setAttribute("data-bars", String(bars));
    section.setAttribute("data-calls", String(calls));
    section.setAttribute("data-rows", String(rows.length));
  }

  function highlight(name) {
    var rows = document.querySelectorAll("#timeline-svg .tl-row"), first = null;
    rows.forEach(function (r) {
      var id = r.getAttribute("data-step"), on = id === name || id.indexOf(name + "/") === 0;
      r.classList.toggle("hl", on);
      if (on && !first) { first = r; }
    });
    if (first && first.scrollIntoView) { first.scrollIntoView({ block: "nearest" }); }
  }

  try { drawDag(); drawTimeline(); document.body.setAttribute("data-rendered", "1"); }
  catch (err) {
    document.body.setAttribute("data-rendered", "error");
    var box = document.getElementById("render-error");
    box.textContent = "The graph and timeline could not be drawn: " + err;
    box.hidden = false;
  }
})();
"""
