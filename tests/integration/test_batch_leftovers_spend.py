"""An old batch's tokens and cost where the last session left them (findings):

- ``shoal show BATCH_ID --html``: for a batch journaled by an older shoal (its items'
  outcomes without their spend) one of whose items' journals is gone, the report showed
  the other items' sum as the run's tokens and cost, and that item at 0 tokens, $0. Now
  the totals read "at least" with a note naming the item whose spend is unknown, and the
  item's row (and its data for the script) says unknown;
- ``shoal cost --run BATCH_ID``: on an old batch whose items' journals are all there it
  priced the items' journals, the right totals (not a false 0: checked here); with one
  item's journal gone it priced the others as the whole batch ("batch of 4 runs" for 5
  items). Now it names the item and says "at least", ``--json`` ``recorded_usd`` null.

The batch runs through the CLI (the Typer app in this process, ``--sim``) in SQLite
under tmp_path, then is rewritten through the Store API as an older shoal recorded it.
"""

from __future__ import annotations

import asyncio
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import typer
from sim_cli_kit import invoke, journal_as_before_totals, run_and_runs_cli

from shoal.cli import cost_cmd

ROOT = Path(__file__).resolve().parents[2]
SUMMARIZER = f"{ROOT / 'examples' / 'batch_folder.py'}:summarizer"
DOCS = ROOT / "examples" / "docs"
ITEMS = len(list(DOCS.iterdir()))
DATA = re.compile(r'<script type="application/json" id="shoal-data">(.*?)</script>', re.S)


@pytest.fixture
def app() -> typer.Typer:
    app = run_and_runs_cli()
    cost_cmd.register(app)
    return app


def _old_batch(app: typer.Typer, store: str, *, gone: bool) -> dict[str, Any]:
    """Batch ``old`` over the example documents, recorded again as an older shoal did
    (outcomes without spend); ``gone``: item ``old-0``'s journal deleted. Returns its
    fresh report (``shoal runs --batch --json``) and its items' steps before that."""
    done = invoke(app, "batch", SUMMARIZER, "-d", str(DOCS), "--sim", "--store", store,
                  "--run-id", "old", "--no-progress")
    assert done.exit_code == 0, done.output
    fresh: dict[str, Any] = json.loads(invoke(app, "runs", "--batch", "old", "--store", store,
                                              "--json").stdout)
    assert fresh["tokens"] > 0 and fresh["cost_usd"] > 0
    fresh["steps"] = json.loads(invoke(app, "show", "old", "--store", store,
                                       "--json").stdout)["steps"]
    asyncio.run(journal_as_before_totals(store, "old", spend=False))
    if gone:
        assert invoke(app, "delete", "old-0", "--store", store).exit_code == 0
    return fresh


class _Cells(HTMLParser):
    """The text of each ``<tr data-step=...>`` row's cells and of each KPI box, with the
    box's ``data-spend``; the ``#spend-unknown`` note's text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.kpis: dict[str, tuple[str, str | None]] = {}
        self.note = ""
        self._row: str | None = None
        self._kpi: tuple[str, str | None] | None = None
        self._in_note = False
        self._cell: list[str] | None = None
        self._kpi_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        step = a.get("data-step")
        if tag == "tr" and step:
            self._row = step
            self.rows[step] = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "div" and a.get("class") == "kpi":
            self._kpi, self._kpi_text = (a["data-kpi"] or "", a.get("data-spend")), []
        elif tag == "p" and a.get("id") == "spend-unknown":
            self._in_note = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self.rows[self._row].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "div" and self._kpi is not None:
            name, spend = self._kpi
            self.kpis[name] = ("".join(self._kpi_text).removeprefix(name), spend)
            self._kpi = None
        elif tag == "p":
            self._in_note = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._kpi is not None:
            self._kpi_text.append(data)
        if self._in_note:
            self.note += data


def _payload(html: str) -> dict[str, Any]:
    found = DATA.search(html)
    assert found, "no data block in the report"
    data: dict[str, Any] = json.loads(found.group(1))
    data["steps"] = [dict(zip(data["steps"]["keys"], row, strict=True))
                     for row in data["steps"]["rows"]]
    return data


# -- shoal show --html ---------------------------------------------------------------------


def test_the_report_of_an_old_batch_with_an_item_journal_gone_says_at_least(
        app: typer.Typer, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    fresh = _old_batch(app, store, gone=True)
    known = fresh["steps"][1:]  # item 0's spend went with its journal
    tokens, cost = sum(s["tokens"] for s in known), sum(s["cost_usd"] for s in known)
    assert 0 < tokens < fresh["tokens"]

    out = tmp_path / "report.html"
    done = invoke(app, "show", "old", "--store", store, "--html", str(out))
    assert done.exit_code == 0, done.output
    html = out.read_text("utf-8")
    page = _Cells()
    page.feed(html)
    assert page.kpis["tokens"] == (f"at least {tokens:,}", "partial"), page.kpis  # was "444"
    assert page.kpis["cost"] == (f"at least ${cost:.6f}", "partial"), page.kpis
    note = " ".join(page.note.split())
    assert (f"tokens and cost: at least {tokens:,} tokens, at least ${cost:.6f}; 1 item's "
            "spend unknown: its outcome was recorded without it and its journal is gone "
            "(old-0).") == note, note

    # its row, and what the script draws from, say unknown (were 0 and $0.000000)
    assert page.rows["item/00000000"][6:8] == ["unknown", "unknown"], page.rows
    second = fresh["steps"][1]
    assert page.rows["item/00000001"][6:8] == [f"{second['tokens']:,}",
                                               f"${second['cost_usd']:.6f}"]
    data = _payload(html)
    assert [(s["tokens"], s["cost"]) for s in data["steps"][:1]] == [(None, None)]
    assert all(s["tokens"] for s in data["steps"][1:])
    (node,) = data["nodes"]
    assert (node["name"], node["tokens"], node["spend_unknown"]) == ("item", tokens, 1)


def test_the_report_of_an_old_batch_with_its_journals_shows_their_totals(
        app: typer.Typer, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    fresh = _old_batch(app, store, gone=False)
    out = tmp_path / "report.html"
    assert invoke(app, "show", "old", "--store", store, "--html", str(out)).exit_code == 0
    page = _Cells()
    page.feed(out.read_text("utf-8"))
    assert page.kpis["tokens"] == (f"{fresh['tokens']:,}", None)
    assert page.kpis["cost"] == (f"${fresh['cost_usd']:.6f}", None)
    assert page.note == ""
    assert "unknown" not in page.rows["item/00000000"]


# -- shoal cost --run ---------------------------------------------------------------------


def test_cost_of_an_old_batch_is_its_items_totals(app: typer.Typer, tmp_path: Path) -> None:
    """Not a false 0: the items' journals are priced (checked, it already was so)."""
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    fresh = _old_batch(app, store, gone=False)
    out = invoke(app, "cost", "--run", "old", "--store", store, "--json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["recorded_usd"] == pytest.approx(fresh["cost_usd"])
    assert data["usage"]["input_tokens"] + data["usage"]["output_tokens"] == fresh["tokens"]
    assert sorted(data["run_ids"]) == [f"old-{i}" for i in range(ITEMS)]
    assert data["unknown_spend"] == []
    text = " ".join(invoke(app, "cost", "--run", "old", "--store", store).stdout.split())
    assert f"batch old ({ITEMS} items, flow agent) cost ${fresh['cost_usd']:.6f}:" in text
    assert "at least" not in text


def test_cost_of_an_old_batch_with_an_item_journal_gone_says_at_least(
        app: typer.Typer, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    fresh = _old_batch(app, store, gone=True)
    known = fresh["steps"][1:]
    tokens, cost = sum(s["tokens"] for s in known), sum(s["cost_usd"] for s in known)

    out = invoke(app, "cost", "--run", "old", "--store", store, "--json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["recorded_usd"] is None  # was the others' sum, as if the whole batch's
    assert data["recorded_usd_at_least"] == pytest.approx(cost)
    assert data["unknown_spend"] == ["old-0"]
    assert data["usage"]["input_tokens"] + data["usage"]["output_tokens"] == tokens

    text = " ".join(invoke(app, "cost", "--run", "old", "--store", store).stdout.split())
    assert f"batch old ({ITEMS} items, flow agent) cost at least ${cost:.6f}:" in text, text
    assert ("1 item's spend unknown (old-0: its outcome was recorded without it and its "
            "journal is gone): the figures below are the other items', a floor") in text
    assert "this batch cost at least $" in text and "that is at least $" in text


def test_cost_of_a_batch_with_an_item_journal_gone_counts_its_recorded_cost(
        app: typer.Typer, tmp_path: Path) -> None:
    """A batch of this shoal: each outcome carries its item's cost, so the batch's cost
    is whole; the item's tokens by model went with its journal."""
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    done = invoke(app, "batch", SUMMARIZER, "-d", str(DOCS), "--sim", "--store", store,
                  "--run-id", "new", "--no-progress")
    assert done.exit_code == 0, done.output
    fresh = json.loads(invoke(app, "runs", "--batch", "new", "--store", store,
                              "--json").stdout)
    assert invoke(app, "delete", "new-0", "--store", store).exit_code == 0
    data = json.loads(invoke(app, "cost", "--run", "new", "--store", store, "--json").stdout)
    assert data["recorded_usd"] == pytest.approx(fresh["cost_usd"])
    assert data["unknown_spend"] == ["new-0"]
    assert data["usage"]["input_tokens"] + data["usage"]["output_tokens"] < fresh["tokens"]
    text = " ".join(invoke(app, "cost", "--run", "new", "--store", store).stdout.split())
    assert f"batch new ({ITEMS} items, flow agent) cost ${fresh['cost_usd']:.6f}:" in text
    assert ("1 item's tokens by model unknown (new-0: its journal is gone; its cost is "
            "counted from its recorded outcome): the projections below count the other "
            "items' tokens, a floor") in text, text
