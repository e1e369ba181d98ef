"""``shoal models``: the model catalog (shipped + ``shoal.toml``) as a table: provider,
context window, max output, prices per million tokens (input, output, cache read, 5-minute
and 1-hour cache write), channels, and whether a key is set for at least one of them
(never the key itself); a model its provider retires says on which day."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shoal.cli.common import Command

if TYPE_CHECKING:
    from shoal.config import Config, ModelInfo

__all__ = ["model_rows", "register"]


def register(app: typer.Typer) -> None:
    app.command("models", cls=Command)(models)


def _key(cfg: Config, info: ModelInfo) -> str:
    """"set" when a channel of the model has its key (or needs none), else the variable(s)
    to set."""
    channels = cfg.channels_for(info)
    if any(ch.api_key is not None or (ch.api_key_env and ch.key() is not None)
           for ch in channels):
        return "set"
    if all(not ch.api_key_env and ch.api_key is None for ch in channels):
        return "none needed"
    return "unset: " + ", ".join(sorted({ch.api_key_env for ch in channels if ch.api_key_env}))


def model_rows(cfg: Config) -> list[dict[str, Any]]:
    """One plain row per model, as ``shoal models --json`` prints them (prices in USD per
    million tokens, defaults filled in as they are billed)."""
    rows = []
    for info in sorted(cfg.models.values(), key=lambda m: (m.provider, m.name)):
        price = info.price
        # A 1-hour TTL exists where writes carry a fee (Anthropic) or the user priced it.
        ttl_1h = info.cache_write_1h is not None or price.cache_write != price.input
        rows.append({
            "model": info.name, "provider": info.provider, "aliases": list(info.aliases),
            "context_window": info.context_window, "max_output": info.max_output,
            "input": price.input, "output": price.output, "cache_read": price.cached_input,
            "cache_write": price.cache_write,
            "cache_write_1h": price.cache_write_1h if ttl_1h else None,
            "channels": list(info.channels), "key": _key(cfg, info),
            "retires": info.retires.isoformat() if info.retires else None,
            "replaced_by": info.replaced_by,
        })
    return rows


def _tokens(n: int) -> str:
    return f"{n:,}"


def _usd(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def models(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="shoal.toml (default: $SHOAL_CONFIG, else ./shoal.toml).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
) -> None:
    """List the models: provider, context window, max output, prices in USD per million
    tokens (input, output, cache read, cache write 5m/1h), channels, and whether an API
    key is set (the key itself is never shown)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from shoal.cli.common import fail
    from shoal.config import Config
    from shoal.errors import ConfigError

    try:
        cfg = Config.load(config)
    except ConfigError as exc:
        raise fail(exc) from None
    rows = model_rows(cfg)
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    console = Console()
    if not console.is_terminal:  # a pipe or a file: whole rows
        console.width = max(console.width, 180)
    table = Table(box=None, pad_edge=False, caption="prices: USD per million tokens; "
                  "cache write = 5-minute TTL, 1h = 1-hour TTL")
    cols = (("model", "left"), ("provider", "left"), ("context", "right"),
            ("max out", "right"), ("input", "right"), ("output", "right"),
            ("cache read", "right"), ("cache write", "right"), ("1h write", "right"),
            ("channels", "left"), ("key", "left"))
    for col, justify in cols:
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in rows:
        name = escape(r["model"])
        if r["retires"]:  # the provider retires it: say so where the name is read
            name += f" [yellow](retires {r['retires']})[/]"
        table.add_row(name, escape(r["provider"]), _tokens(r["context_window"]),
                      _tokens(r["max_output"]), _usd(r["input"]), _usd(r["output"]),
                      _usd(r["cache_read"]), _usd(r["cache_write"]), _usd(r["cache_write_1h"]),
                      escape(", ".join(r["channels"])), escape(r["key"]))
    console.print(table)
