"""``shoal sim``: run the provider simulator as a standalone server."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from shoal.cli.common import Command
from shoal.cli.loop import run as run_loop

__all__ = ["register", "serve"]

_FAULT_FLAGS = (
    "error_rate", "error_status", "rate_limit_rate", "hang_rate", "cut_rate", "malformed_rate",
    "schema_invalid_rate", "stream_error_rate", "hang_max_s",
)  # fmt: skip
_PROFILE_FLAGS = ("ttft_s", "tokens_per_s", "output_tokens", "context_window", "jitter_s")


def register(app: typer.Typer) -> None:
    """Add the ``sim`` command to *app*."""
    app.command("sim", cls=Command)(sim)


def sim(
    *,
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 = all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(
        min=0, max=65535, help="Port; 0 picks a free one (printed).")] = 8100,
    config: Annotated[
        Path | None, typer.Option("--config", help="Scenario TOML file; flags override it.")
    ] = None,
    scenario: Annotated[
        str | None, typer.Option(help="Named fault mix: storm | calm; other flags refine it.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of content and faults.")] = None,
    cap: Annotated[
        int | None, typer.Option(help="Max concurrent requests; one more gets 429.")
    ] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute cap.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute cap.")] = None,
    latency: Annotated[
        float | None, typer.Option(help="Seconds before an answer (every model).")
    ] = None,
    ttft: Annotated[float | None, typer.Option(help="Seconds to the first streamed token.")] = None,
    tokens_per_s: Annotated[float | None, typer.Option(help="Streaming speed.")] = None,
    output_tokens: Annotated[int | None, typer.Option(help="Tokens per text answer.")] = None,
    context_window: Annotated[int | None, typer.Option(help="Longest prompt accepted.")] = None,
    jitter: Annotated[float | None, typer.Option(help="Extra random latency, 0..N s.")] = None,
    style: Annotated[
        str | None,
        typer.Option(
            help="Provider imitated, with its refusals: openai | anthropic | deepseek | "
            "moonshot | zhipu | minimax | gemini | permissive (refuses nothing)."
        ),
    ] = None,
    error_rate: Annotated[float | None, typer.Option(help="Share of 5xx answers.")] = None,
    error_status: Annotated[int | None, typer.Option(help="500, 502, 503 or 529.")] = None,
    rate_limit_rate: Annotated[float | None, typer.Option(help="Share of random 429s.")] = None,
    hang_rate: Annotated[float | None, typer.Option(help="Share never answered.")] = None,
    hang_max_s: Annotated[
        float | None, typer.Option("--hang-max", help="Longest hang, seconds (default 600).")
    ] = None,
    cut_rate: Annotated[float | None, typer.Option(help="Share cut mid-body.")] = None,
    malformed_rate: Annotated[float | None, typer.Option(help="Share with broken JSON.")] = None,
    schema_invalid_rate: Annotated[
        float | None, typer.Option(help="Share of JSON that violates the schema.")
    ] = None,
    stream_error_rate: Annotated[
        float | None, typer.Option(help="Share of 200 streams carrying an error.")
    ] = None,
    quota: Annotated[bool, typer.Option(help="Every request: quota exhausted.")] = False,
    auth_fail: Annotated[bool, typer.Option(help="Every request: 401.")] = False,
) -> None:
    """Serve a simulated OpenAI + Anthropic provider until Ctrl-C / SIGTERM."""
    from shoal.errors import ConfigError
    from shoal.sim import ModelProfile, SimConfig

    given = dict(locals())
    try:
        cfg = SimConfig.from_toml(config) if config is not None else SimConfig()
        if scenario is not None:
            cfg = cfg.replace(scenario=scenario)
        changes: dict[str, Any] = {}
        for name, key in (("seed", "seed"), ("cap", "max_concurrency"), ("rpm", "rpm"),
                          ("tpm", "tpm"), ("style", "style")):  # fmt: skip
            if given[name] is not None:
                changes[key] = given[name]
        faults = {k: given[k] for k in _FAULT_FLAGS if given[k] is not None}
        if quota:
            faults["quota_exhausted"] = True
        if auth_fail:
            faults["auth_fail"] = True
        if faults:
            changes["faults"] = faults
        profile = {
            "ttft_s": ttft, "tokens_per_s": tokens_per_s, "output_tokens": output_tokens,
            "context_window": context_window, "jitter_s": jitter, "latency_s": latency,
        }  # fmt: skip
        profile = {k: v for k, v in profile.items() if v is not None}
        if profile:
            # Flags shape every model: apply them to each configured profile.
            models = dict(cfg.models) or {"*": ModelProfile()}
            changes["models"] = {
                name: _with(p, profile) for name, p in models.items()
            }
        cfg = cfg.replace(**changes)
        run_loop(serve(cfg, host=host, port=port))  # uvloop when installed
    except ConfigError as exc:
        typer.echo(f"shoal sim: {exc}", err=True)
        raise typer.Exit(2) from None


def _with(profile: Any, changes: dict[str, Any]) -> Any:
    import dataclasses

    return dataclasses.replace(profile, **changes)


async def serve(config: Any, *, host: str, port: int) -> None:
    """Run a ``SimServer`` until SIGINT/SIGTERM; print one ``listening on`` line first."""
    from shoal.sim import SimServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix loops
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    async with SimServer(config, host=host, port=port) as server:
        print(f"shoal sim listening on {server.url}", flush=True)
        await stop.wait()
    print("shoal sim stopped", file=sys.stderr, flush=True)
