"""``shoal cost``: what a workload costs per day, month (30 days) and year (365 days) on
several models side by side, at the catalog's prices.

Two ways to describe the workload:

- by volume: ``--requests-per-day``, ``--input-tokens`` and ``--output-tokens`` per
  request, and ``--cache-hit-rate`` (the share of each prompt read from the cache);
- from a journaled run or batch: ``--run RUN_ID`` (``--store URL``) and
  ``--runs-per-day``: its tokens of every kind, priced on its own models or on
  ``--models``, with the caching it got (or ``--cache-hit-rate``) and without.

The arithmetic is :mod:`shoal.pricing`; ``--json`` prints every figure unrounded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shoal.cli.common import Command, fail, plain
from shoal.errors import ConfigError, RunNotFound, ShoalError
from shoal.types import Usage

if TYPE_CHECKING:
    from rich.table import Table

    from shoal.config import Config
    from shoal.pricing import ModelPrice
    from shoal.stores.base import Store
    from shoal.stores.records import RunRecord, StepRecord

__all__ = ["RunSpend", "load_spend", "register", "run_spend", "usage_from_json", "volume_rows"]

_USAGE_KEYS = tuple(f.name for f in fields(Usage))


def register(app: typer.Typer) -> None:
    app.command("cost", cls=Command)(cost)


# -- reading a run's spend from its journal ------------------------------------------------


@dataclass(slots=True)
class RunSpend:
    """What one run (or every run of a batch) used, by model, from its journal."""

    run_ids: list[str]
    flow: str
    recorded_usd: float  # the runs' cost as billed when they ran
    by_model: dict[str, Usage] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # the (first) run's: config, sim
    # A batch with a record of its own (shoal.scale.batch_ids): its id and item count.
    batch_id: str | None = None
    items: int = 0
    # Its items that ran but whose journals are gone (deleted, pruned): their tokens by
    # model are not in ``by_model``; their cost is in ``recorded_usd`` when their
    # outcomes carry it, else ``cost_known`` is False and ``recorded_usd`` is a floor.
    unknown: list[str] = field(default_factory=list)
    cost_known: bool = True

    @property
    def usage(self) -> Usage:
        return sum(self.by_model.values(), Usage())


def usage_from_json(raw: Any) -> Usage:
    """A Usage from its journaled JSON; keys it does not know (or lacks, in records older
    than a field) are ignored."""
    if not isinstance(raw, dict):
        return Usage()
    return Usage(**{k: int(raw.get(k) or 0) for k in _USAGE_KEYS})


def _steps_spend(records: list[StepRecord], into: dict[str, Usage]) -> None:
    """Add each step's usage under its model: its journaled model turns when it has any
    (each with its own model), else the step's own result."""
    turns: dict[str, list[StepRecord]] = {}
    steps: list[StepRecord] = []
    for rec in records:
        if rec.meta.get("kind") == "turn":
            turns.setdefault(str(rec.meta.get("step")), []).append(rec)
        else:
            steps.append(rec)
    for rec in steps:
        results = [t.result for t in turns.pop(rec.step_id, [])] or [rec.result]
        for result in results:
            if isinstance(result, dict) and result.get("model"):
                model = str(result["model"])
                into[model] = into.get(model, Usage()) + usage_from_json(result.get("usage"))
    for orphans in turns.values():  # turns of a step record that is missing
        for t in orphans:
            if isinstance(t.result, dict) and t.result.get("model"):
                model = str(t.result["model"])
                into[model] = into.get(model, Usage()) + usage_from_json(t.result.get("usage"))


async def run_spend(store: Store, run_id: str) -> RunSpend:
    """The spend of run ``run_id``, or of the batch whose items ran as ``run_id-0``,
    ``run_id-1``, …; :class:`RunNotFound` if neither is in ``store``. A batch with its
    own record is its items' journals, and names the items whose journals are gone."""
    from shoal.scale.batch_ids import is_batch

    run = await store.get_run(run_id)
    if run is not None and is_batch(run):  # a batch record: its items
        return await _batch_spend(store, run)
    if run is not None and run.meta.get("kind") == "batch":  # not one shoal recorded
        run = None
    runs = [run] if run is not None else [
        r for r in await store.list_runs(limit=1_000_000)
        if r.run_id.startswith(run_id + "-") and r.run_id[len(run_id) + 1:].isdigit()]
    if not runs:
        raise RunNotFound(f"no run or batch {run_id!r} in {store.url}; `shoal runs` lists "
                          "the runs there (a batch's items are RUN_ID-0, RUN_ID-1, …)")
    spend = RunSpend([r.run_id for r in runs], runs[0].flow, sum(r.cost_usd for r in runs),
                     meta=dict(runs[0].meta))
    for r in runs:
        _steps_spend(await store.get_steps(r.run_id), spend.by_model)
    return spend


async def _batch_spend(store: Store, batch: RunRecord) -> RunSpend:
    """A batch's items' journals; an item that ran (its outcome is recorded) but whose
    journal is gone counts with the cost its outcome recorded, or as unknown when that
    outcome (an older shoal's) lacks it."""
    from shoal.scale.batch_ids import batch_items

    rows = await batch_items(store, batch, look_up_open=False)
    runs: list[RunRecord] = []
    spend = RunSpend([], batch.flow, 0.0, batch_id=batch.run_id, items=len(rows))
    for row in rows:
        run = await store.get_run(row.run_id)
        if run is not None:
            runs.append(run)
            _steps_spend(await store.get_steps(run.run_id), spend.by_model)
        elif row.status != "pending":  # it ran; its journal is gone
            spend.unknown.append(row.run_id)
            spend.cost_known = spend.cost_known and row.spend_known
            spend.recorded_usd += row.cost_usd if row.spend_known else 0.0
    spend.run_ids = [r.run_id for r in runs]
    spend.recorded_usd += sum(r.cost_usd for r in runs)
    spend.flow = runs[0].flow if runs else batch.flow
    spend.meta = dict(runs[0].meta if runs else batch.meta)
    return spend


async def load_spend(url: str | None, run_id: str) -> RunSpend:
    from shoal.stores import open_store

    async with open_store(url) as store:
        return await run_spend(store, run_id)


# -- pricing rows ---------------------------------------------------------------------------


def _prices(price: ModelPrice) -> dict[str, float]:
    return {"input": price.input, "output": price.output, "cache_read": price.cached_input,
            "cache_write": price.cache_write, "cache_write_1h": price.cache_write_1h}


def _models(cfg: Config, names: str | None) -> list[str]:
    """The catalog names of ``--models`` (aliases resolved, ConfigError if unknown), or
    every priced model of the catalog."""
    if not names:
        return [m.name for m in sorted(cfg.models.values(), key=lambda m: (m.provider, m.name))
                if m.input or m.output]
    return [cfg.model(n.strip()).name for n in names.split(",") if n.strip()]


def volume_rows(cfg: Config, models: list[str], *, requests_per_day: float,
                input_tokens: int, output_tokens: int, cache_hit_rate: float = 0.0,
                cache_write_rate: float = 0.0) -> list[dict[str, Any]]:
    """One row per model: the price of one request and of the volume per day, month and
    year, with the caching asked for and without."""
    from shoal.pricing import project, projected_usage

    per_request = projected_usage(input_tokens, output_tokens, cache_hit_rate=cache_hit_rate,
                                  cache_write_rate=cache_write_rate)
    rows = []
    for name in models:
        info = cfg.model(name)
        p = project(info.price, per_request, requests_per_day)
        rows.append({"model": info.name, "provider": info.provider,
                     "prices": _prices(info.price), "per_request_usd": p.per_request,
                     "daily_usd": p.daily, "monthly_usd": p.monthly, "yearly_usd": p.yearly,
                     "uncached_monthly_usd": p.uncached_monthly,
                     "saved_monthly_usd": p.saved_monthly})
    return rows


def _run_rows(cfg: Config, spend: RunSpend, models: list[str], runs_per_day: float,
              cache_hit_rate: float | None) -> list[dict[str, Any]]:
    """Rows pricing the run's tokens: "as run" (each model's tokens at its own price) when
    no --models, else the whole run's tokens on each model."""
    from shoal.pricing import DAYS_PER_MONTH, DAYS_PER_YEAR, uncached

    def cached(u: Usage) -> Usage:
        if cache_hit_rate is None:
            return u  # the caching the run got
        return Usage(u.input_tokens, u.output_tokens, round(u.input_tokens * cache_hit_rate),
                     u.reasoning_tokens)

    groups: list[tuple[str, list[tuple[ModelPrice, Usage]]]] = []
    if models:
        groups = [(m, [(cfg.model(m).price, spend.usage)]) for m in models]
    else:
        known = [(m, u) for m, u in spend.by_model.items() if m in cfg.models]
        if known:
            label = " + ".join(m for m, _ in known)
            groups = [(label, [(cfg.models[m].price, u) for m, u in known])]
    rows = []
    for label, parts in groups:
        with_cache = sum(price.cost(cached(u)) for price, u in parts)
        without = sum(price.cost(uncached(u)) for price, u in parts)
        daily = with_cache * runs_per_day
        rows.append({"model": label, "run_usd": with_cache, "run_uncached_usd": without,
                     "daily_usd": daily, "monthly_usd": daily * DAYS_PER_MONTH,
                     "yearly_usd": daily * DAYS_PER_YEAR,
                     "uncached_monthly_usd": without * runs_per_day * DAYS_PER_MONTH,
                     "saved_monthly_usd": (without - with_cache) * runs_per_day
                     * DAYS_PER_MONTH})
    return rows


# -- the command ---------------------------------------------------------------------------


def _count(x: float) -> str:
    """10,000 for 10000.0 (never 1e+06); fractions as given."""
    return f"{int(x):,}" if float(x).is_integer() else f"{x:,}"


def _money(x: float) -> str:
    return f"{x:,.2f}"


def _dollars(x: float) -> str:
    """Cents for sums of a dollar or more; six places below (one run often costs less)."""
    return f"${x:,.2f}" if abs(x) >= 1 else f"${x:.6f}"


def cost(
    *,
    requests_per_day: Annotated[float | None, typer.Option(
        help="Requests per day (with --input-tokens and --output-tokens).")] = None,
    input_tokens: Annotated[int | None, typer.Option(
        help="Prompt tokens per request (system prompt, tools, history, input).")] = None,
    output_tokens: Annotated[int | None, typer.Option(
        help="Output tokens per request (reasoning included).")] = None,
    cache_hit_rate: Annotated[float | None, typer.Option(
        help="Share of each prompt read from the provider's cache, 0.0-1.0 (default: 0 "
             "for a volume; for --run, the caching the run got).")] = None,
    cache_write_rate: Annotated[float, typer.Option(
        help="Share of each prompt written to the cache (5-minute TTL), 0.0-1.0.")] = 0.0,
    models: Annotated[str | None, typer.Option(
        help="Comma-separated models to compare (default: every priced catalog model; "
             "for --run, the models the run used).")] = None,
    run: Annotated[str | None, typer.Option(
        "--run", help="Price a journaled run, or a batch (its items RUN_ID-0, -1, …).")] = None,
    runs_per_day: Annotated[float, typer.Option(
        help="With --run: how many such runs per day.")] = 1.0,
    store: Annotated[str | None, typer.Option(
        "--store", envvar="SHOAL_STORE",
        help="With --run: the store URL (default $SHOAL_STORE or sqlite:///.shoal/runs.db).")
    ] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="shoal.toml (default: $SHOAL_CONFIG, else ./shoal.toml).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
) -> None:
    """Project daily, monthly (30 days) and yearly cost per model, side by side, from a
    request volume or from a journaled run or batch, with caching and without."""
    from shoal.cli.loop import run as run_loop
    from shoal.config import Config

    try:
        if run is not None:
            if runs_per_day < 0:
                raise ConfigError(f"--runs-per-day must not be negative, not {runs_per_day}")
            if cache_hit_rate is not None and not 0.0 <= cache_hit_rate <= 1.0:
                raise ConfigError(f"--cache-hit-rate {cache_hit_rate} is not a fraction: "
                                  "give 0.0 to 1.0")
            spend = run_loop(load_spend(store, run))
            cfg = Config.load(config) if config is not None else _prices_of_run(spend)
            names = _models(cfg, models) if models else []
            _print_run(cfg, spend, models=names, runs_per_day=runs_per_day,
                       cache_hit_rate=cache_hit_rate, json_out=json_out)
            return
        cfg = Config.load(config)
        if requests_per_day is None or input_tokens is None or output_tokens is None:
            missing = [flag for flag, v in (("--requests-per-day", requests_per_day),
                                            ("--input-tokens", input_tokens),
                                            ("--output-tokens", output_tokens)) if v is None]
            raise ConfigError(f"give {', '.join(missing)} (the volume to price), or --run "
                              "RUN_ID to price a journaled run; e.g. shoal cost "
                              "--requests-per-day 10000 --input-tokens 3000 "
                              "--output-tokens 800 --models gpt-4.1,claude-sonnet-4-6")
        rows = volume_rows(cfg, _models(cfg, models), requests_per_day=requests_per_day,
                           input_tokens=input_tokens, output_tokens=output_tokens,
                           cache_hit_rate=cache_hit_rate or 0.0,
                           cache_write_rate=cache_write_rate)
    except ShoalError as exc:
        raise fail(exc) from None
    volume = {"requests_per_day": requests_per_day, "input_tokens": input_tokens,
              "output_tokens": output_tokens, "cache_hit_rate": cache_hit_rate or 0.0,
              "cache_write_rate": cache_write_rate}
    if json_out:
        print(json.dumps({**volume, "days_per_month": 30, "days_per_year": 365,
                          "models": rows}, indent=2))
        return
    title = (f"{_count(requests_per_day)} requests/day × {input_tokens:,} input + "
             f"{output_tokens:,} output tokens, cache hit rate {volume['cache_hit_rate']:.0%}")
    _console().print(_table(title, rows, per="request", caching=bool(
        cache_hit_rate or cache_write_rate)))


def _prices_of_run(spend: RunSpend) -> Config:
    """The configuration the run recorded (``shoal run`` keeps its --config and --sim)."""
    from shoal.cli.live import run_prices

    path = spend.meta.get("config")
    return run_prices(path if isinstance(path, str) else None, sim=bool(spend.meta.get("sim")))


def _console() -> Any:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


def _table(title: str, rows: list[dict[str, Any]], *, per: str, caching: bool) -> Table:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="USD; month = 30 days, year = 365 days")
    cols = ["model", f"$/{per}", "$/day", "$/month", "$/year"]
    if caching:
        cols += ["$/month uncached", "saved $/month"]
    for col in cols:
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    first = "per_request_usd" if per == "request" else "run_usd"
    for r in rows:
        cells = [escape(r["model"]), f"{r[first]:.6f}", _money(r["daily_usd"]),
                 _money(r["monthly_usd"]), _money(r["yearly_usd"])]
        if caching:
            cells += [_money(r["uncached_monthly_usd"]), _money(r["saved_monthly_usd"])]
        table.add_row(*cells)
    return table


def _print_run(cfg: Config, spend: RunSpend, *, models: list[str], runs_per_day: float,
               cache_hit_rate: float | None, json_out: bool) -> None:
    rows = _run_rows(cfg, spend, models, runs_per_day, cache_hit_rate)
    u = spend.usage
    unknown = sorted(m for m in spend.by_model if m not in cfg.models)
    if spend.batch_id is not None:
        what = f"batch {spend.batch_id} ({spend.items} items, flow {spend.flow})"
    else:
        what = (f"run {spend.run_ids[0]}" if len(spend.run_ids) == 1 else
                f"batch of {len(spend.run_ids)} runs") + f" (flow {spend.flow})"
    if json_out:
        print(json.dumps({
            "run_ids": spend.run_ids, "flow": spend.flow,
            # unknown when an item's cost went with its journal: not the others' sum
            "recorded_usd": spend.recorded_usd if spend.cost_known else None,
            **({} if spend.cost_known else {"recorded_usd_at_least": spend.recorded_usd}),
            "unknown_spend": spend.unknown,
            "usage": {k: getattr(u, k) for k in _USAGE_KEYS},
            "by_model": {m: {k: getattr(x, k) for k in _USAGE_KEYS}
                         for m, x in spend.by_model.items()},
            "runs_per_day": runs_per_day, "cache_hit_rate": cache_hit_rate,
            "unpriced_models": unknown, "models": rows}, indent=2))
        return
    console = _console()
    cost_floor = "" if spend.cost_known else "at least "
    floor = "at least " if spend.unknown else ""  # the projections: the items known
    console.print(
        f"{plain(what)} cost {cost_floor}${spend.recorded_usd:.6f}: "
        f"{floor}{u.input_tokens:,} input tokens ({u.cached_input_tokens:,} read from cache, "
        f"{u.cache_write_tokens:,} written to it), {u.output_tokens:,} output tokens",
        highlight=False, soft_wrap=True)
    if spend.unknown:
        console.print(plain(_unknown_line(spend)), highlight=False, soft_wrap=True)
    if unknown:
        console.print(f"not in the catalog, left out: {plain(', '.join(unknown))}",
                      highlight=False, soft_wrap=True)
    if not rows:
        console.print("nothing to price: give --models to price its tokens on catalog models",
                      highlight=False)
        return
    single = len(spend.run_ids) == 1 and spend.batch_id is None
    for r in rows:
        console.print(
            f"this {'run' if single else 'batch'} cost {cost_floor}"
            f"{_dollars(spend.recorded_usd)}; at {_count(runs_per_day)}/day that is {floor}"
            f"{_dollars(r['uncached_monthly_usd'])}/month on {plain(r['model'])}, {floor}"
            f"{_dollars(r['monthly_usd'])} with caching", highlight=False, soft_wrap=True)
    title = f"{what} × {_count(runs_per_day)}/day" + (" (at least)" if floor else "")
    console.print(_table(title, rows, per="run", caching=True))


def _unknown_line(spend: RunSpend) -> str:
    """Which items of a batch are missing from its figures, and how that bounds them."""
    many = len(spend.unknown) > 1
    names = ", ".join(spend.unknown[:5]) + (", …" if len(spend.unknown) > 5 else "")
    whose = f"{len(spend.unknown)} {'items' if many else 'item'}" + ("'" if many else "'s")
    if not spend.cost_known:
        return (f"{whose} spend unknown ({names}: "
                f"{'their outcomes were' if many else 'its outcome was'} recorded without it "
                f"and {'their journals are' if many else 'its journal is'} gone): the figures "
                "below are the other items', a floor")
    return (f"{whose} tokens by model unknown ({names}: "
            f"{'their journals are' if many else 'its journal is'} gone; "
            f"{'their cost is' if many else 'its cost is'} counted from "
            f"{'their recorded outcomes' if many else 'its recorded outcome'}): the "
            "projections below count the other items' tokens, a floor")
