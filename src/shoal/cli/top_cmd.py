"""``shoal top``: a live view of a running shoal process, from its metrics endpoint.

Point it at what ``shoal run --metrics-port PORT`` (or the gateway's ``/metrics``)
serves. Every ``--interval`` seconds it scrapes the endpoint and redraws: per channel
the calls in flight against the limit, the queue, 429s and the breaker; what is
running (runs, steps, agents, tools, model calls); tokens and cost per minute (from the
difference between two scrapes) and in total, per model. ``--once`` prints one frame
(the totals; no rates yet) and exits: for scripts and CI logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import typer

from shoal.cli.common import Command
from shoal.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import RenderableType

    from shoal.clock import RealClock

__all__ = ["Snapshot", "parse", "register", "render", "scrape", "top"]

DEFAULT_URL = "http://127.0.0.1:9464/metrics"
_BREAKER = {0.0: "closed", 1.0: "half-open", 2.0: "OPEN"}


def register(app: typer.Typer) -> None:
    """Add the ``top`` command to *app*."""
    app.command("top", cls=Command)(top)


@dataclass
class Channel:
    in_flight: float = 0.0
    limit: float | None = None
    queue: float = 0.0
    rate_limited: float = 0.0
    failed: float = 0.0
    requests: float = 0.0
    breaker: float = 0.0


@dataclass
class Snapshot:
    """What one scrape says, summed the way the view shows it."""

    at: float
    channels: dict[str, Channel] = field(default_factory=dict)
    running: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)  # model → input + output
    cost: dict[str, float] = field(default_factory=dict)  # model → USD
    calls: dict[str, float] = field(default_factory=dict)  # model → logical calls
    steps: dict[str, float] = field(default_factory=dict)  # status → steps ended

    @property
    def total_tokens(self) -> float:
        return sum(self.tokens.values())

    @property
    def total_cost(self) -> float:
        return sum(self.cost.values())


def parse(text: str, at: float) -> Snapshot:
    """A :class:`Snapshot` from Prometheus text exposition (shoal's series)."""
    from prometheus_client.parser import text_string_to_metric_families

    snap = Snapshot(at)

    def chan(name: str) -> Channel:
        return snap.channels.setdefault(name, Channel())

    def add(into: dict[str, float], key: str, value: float) -> None:
        into[key] = into.get(key, 0.0) + value

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, labels, v = s.name, s.labels, float(s.value)
            if name == "shoal_channel_in_flight":
                chan(labels["channel"]).in_flight = v
            elif name == "shoal_channel_limit":
                chan(labels["channel"]).limit = v
            elif name == "shoal_channel_queue_depth":
                chan(labels["channel"]).queue = v
            elif name == "shoal_channel_breaker_state":
                chan(labels["channel"]).breaker = v
            elif name == "shoal_channel_rate_limited_total":
                chan(labels["channel"]).rate_limited = v
            elif name == "shoal_channel_requests_total":
                c = chan(labels["channel"])
                c.requests += v
                if labels.get("outcome") != "ok":
                    c.failed += v
            elif name == "shoal_running":
                snap.running[labels["what"]] = v
            elif name == "shoal_tokens_total" and labels.get("type") in ("input", "output"):
                add(snap.tokens, labels["model"], v)
            elif name == "shoal_cost_usd_total":
                add(snap.cost, labels["model"], v)
            elif name == "shoal_model_calls_total":
                add(snap.calls, labels["model"], v)
            elif name == "shoal_steps_total":
                add(snap.steps, labels["status"], v)
    return snap


async def scrape(url: str, at: float, *, timeout_s: float = 5.0) -> Snapshot:
    """GET ``url`` and parse it; ``ConfigError`` saying what to check when unreachable."""
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s, \
                s.get(url) as resp:
            if resp.status != 200:
                raise ConfigError(f"{url} answered HTTP {resp.status}: is it a metrics "
                                  "endpoint? (shoal run --metrics-port PORT serves /metrics)")
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach {url} ({type(exc).__name__}): start the process "
                          "with --metrics-port PORT and pass --url "
                          "http://127.0.0.1:PORT/metrics") from None
    try:
        return parse(text, at)
    except ValueError as exc:
        raise ConfigError(f"{url} did not answer Prometheus text format: {exc}") from None


def _per_min(now: float, before: float | None, dt: float | None) -> str:
    if before is None or not dt or dt <= 0:
        return "–"
    return f"{(now - before) * 60.0 / dt:,.1f}"


def render(snap: Snapshot, prev: Snapshot | None = None, *, url: str = "") -> RenderableType:
    """One frame: channels, what runs, tokens and cost per minute (rates need ``prev``)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    dt = snap.at - prev.at if prev is not None else None
    running = snap.running
    head = Text.assemble(
        ("shoal top", "bold"), f"  {url}  " if url else "  ",
        f"runs {running.get('run', 0):.0f} · steps {running.get('step', 0):.0f} · "
        f"agents {running.get('agent', 0):.0f} · tools {running.get('tool', 0):.0f} · "
        f"calls {running.get('call', 0):.0f} running",
        "   steps done: " + (", ".join(f"{k} {v:.0f}" for k, v in sorted(snap.steps.items()))
                            or "none"))
    channels = Table(title="channels", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("channel", "in flight", "limit", "queue", "429s", "failed", "requests",
                "breaker"):
        channels.add_column(col, justify="left" if col in ("channel", "breaker") else "right")
    for name, c in sorted(snap.channels.items()):
        breaker = _BREAKER.get(c.breaker, str(c.breaker))
        channels.add_row(name, f"{c.in_flight:.0f}", "∞" if c.limit is None else f"{c.limit:.0f}",
                         f"{c.queue:.0f}", f"{c.rate_limited:.0f}", f"{c.failed:.0f}",
                         f"{c.requests:.0f}",
                         Text(breaker, style="bold red" if c.breaker >= 2 else ""))
    models = Table(title="models", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("model", "calls", "tokens/min", "$/min", "tokens", "cost $"):
        models.add_column(col, justify="left" if col == "model" else "right")
    for name in sorted(set(snap.tokens) | set(snap.cost) | set(snap.calls)):
        before_t = prev.tokens.get(name, 0.0) if prev is not None else None
        before_c = prev.cost.get(name, 0.0) if prev is not None else None
        models.add_row(name or "(no model)", f"{snap.calls.get(name, 0):.0f}",
                       _per_min(snap.tokens.get(name, 0.0), before_t, dt),
                       _per_min(snap.cost.get(name, 0.0), before_c, dt),
                       f"{snap.tokens.get(name, 0):,.0f}", f"{snap.cost.get(name, 0):.6f}")
    models.add_row(Text("all", style="bold"), f"{sum(snap.calls.values()):.0f}",
                   _per_min(snap.total_tokens, prev.total_tokens if prev else None, dt),
                   _per_min(snap.total_cost, prev.total_cost if prev else None, dt),
                   f"{snap.total_tokens:,.0f}", f"{snap.total_cost:.6f}")
    return Group(head, channels, models)


async def _watch(url: str, interval_s: float, once: bool) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from shoal.clock import RealClock

    clock, console = RealClock(), Console()
    if once:
        console.print(render(await scrape(url, clock.now()), url=url))
        return
    if not console.is_terminal:
        # A pipe or a log file: rich's Live would show only its last frame, on exit
        # (nothing until Ctrl-C), so each scrape is printed as a frame of its own.
        await _frames(url, interval_s, clock, console.print)
        return
    with Live(Text(f"scraping {url} ..."), console=console, auto_refresh=False) as live:
        await _frames(url, interval_s, clock, lambda frame: live.update(frame, refresh=True))


async def _frames(url: str, interval_s: float, clock: RealClock,
                  show: Callable[[RenderableType], object]) -> None:
    """Scrape ``url`` every ``interval_s`` seconds and ``show`` each frame, until
    cancelled; an endpoint that does not answer is shown as such, and tried again."""
    from rich.text import Text

    prev: Snapshot | None = None
    while True:
        try:
            snap = await scrape(url, clock.now())
        except ConfigError as exc:  # the process may come (back) later: keep trying
            show(Text(f"shoal top: {exc}", style="yellow"))
        else:
            show(render(snap, prev, url=url))
            prev = snap
        await clock.sleep(interval_s)


def top(
    url: Annotated[str, typer.Option(
        "--url", "-u", help="The metrics endpoint of a shoal process "
                            "(shoal run --metrics-port PORT).")] = DEFAULT_URL,
    interval: Annotated[float, typer.Option(
        "--interval", "-n", min=0.2, help="Seconds between refreshes.")] = 2.0,
    once: Annotated[bool, typer.Option(
        "--once", help="Print one frame and exit.")] = False,
) -> None:
    """Live view of a running shoal process: channels, running steps, tokens and cost per
    minute, from its Prometheus metrics endpoint. Ctrl-C to quit."""
    from shoal.cli.common import fail
    from shoal.cli.loop import run as run_loop

    try:
        run_loop(_watch(url, interval, once))
    except ConfigError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
