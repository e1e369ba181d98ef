"""``shoal channels``: every channel of the configuration, with the provider family it
uses, its protocol, endpoint, key variable (set or not — never the value) and limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shoal.cli.common import Command

if TYPE_CHECKING:
    from shoal.config import ChannelConfig

__all__ = ["channel_rows", "register"]


def register(app: typer.Typer) -> None:
    app.command("channels", cls=Command)(channels)


def _key_state(ch: ChannelConfig) -> str:
    if ch.api_key is not None:
        return "in config (api_key)"
    if not ch.api_key_env:
        return "none needed"
    return f"{ch.api_key_env} ({'set' if ch.key() is not None else 'unset'})"


def _limits(ch: ChannelConfig) -> str:
    parts = []
    if ch.max_concurrency is not None:
        parts.append(f"{ch.max_concurrency} at once")
    elif ch.adaptive is not False:
        parts.append("adaptive")
    if ch.rpm is not None:
        parts.append(f"{ch.rpm} rpm")
    if ch.tpm is not None:
        parts.append(f"{ch.tpm} tpm")
    if ch.shared:
        parts.append("shared")
    return ", ".join(parts) or "none"


def channel_rows(channels: list[ChannelConfig]) -> list[dict[str, Any]]:
    """One plain row per channel, as ``shoal channels --json`` prints them (a base_url's
    credentials masked)."""
    from shoal.secrets import mask_url

    return [
        {"channel": ch.name, "family": ch.provider, "protocol": ch.protocol,
         "base_url": mask_url(ch.base_url), "key": _key_state(ch), "limits": _limits(ch)}
        for ch in channels
    ]


def channels(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="shoal.toml (default: $SHOAL_CONFIG, else ./shoal.toml).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
) -> None:
    """List the channels: provider family, protocol, base URL, API key variable (set or
    unset; the key itself is never shown) and limits."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from shoal.cli.common import fail
    from shoal.config import Config
    from shoal.errors import ConfigError

    try:
        cfg = Config.load(config)
    except ConfigError as exc:
        raise fail(exc) from None  # exit 2, the message printed literally
    rows = channel_rows(sorted(cfg.channels.values(), key=lambda c: c.name))
    console = Console()
    if not console.is_terminal:  # a pipe or a file: whole rows
        console.width = max(console.width, 160)
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table(box=None, pad_edge=False)
    for col in ("channel", "family", "protocol", "base_url", "key", "limits"):
        table.add_column(col, no_wrap=col != "base_url",
                         overflow="fold" if col == "base_url" else "ellipsis")
    for row in rows:
        table.add_row(*(escape(str(row[c])) for c in ("channel", "family", "protocol", "base_url",
                                             "key", "limits")))
    console.print(table)
