"""``shoal gateway``: the OpenAI- and Anthropic-protocol HTTP gateway over the Router."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shoal.cli.common import Command

if TYPE_CHECKING:
    from shoal.errors import ShoalError

__all__ = ["gateway", "register"]


def register(app: typer.Typer) -> None:
    """Add the ``gateway`` command to *app*."""
    app.command("gateway", cls=Command)(gateway)


def gateway(
    *,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="shoal.toml (default: $SHOAL_CONFIG, else ./shoal.toml).")]
    = None,
    host: Annotated[str | None, typer.Option(
        help="Interface to bind (default 127.0.0.1, or the gateway table's host).")] = None,
    port: Annotated[int | None, typer.Option(
        help="Port (default 8080; 0 picks a free one, printed).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Processes sharing the port (SO_REUSEPORT), each with its own Router; more "
             "than 1 needs redis_url in shoal.toml (keys' limits shared).")] = None,
    store: Annotated[str | None, typer.Option(
        "--store", envvar="SHOAL_STORE",
        help="Where virtual keys live (as for `shoal keys`); none created: no keys, "
             "loopback only.")] = None,
    access_log: Annotated[bool | None, typer.Option(
        "--access-log/--no-access-log", help="One JSON line per request on stderr.")] = None,
) -> None:
    """Serve POST /v1/chat/completions (OpenAI) and POST /v1/messages (Anthropic) for
    every model of the config, through shoal's Router, until SIGTERM (then drain)."""
    from shoal.cli.common import fail
    from shoal.config import Config
    from shoal.errors import ShoalError
    from shoal.gateway.access_log import configure_access_log
    from shoal.gateway.server import run
    from shoal.gateway.settings import GatewaySettings

    try:
        cfg = Config.load(config)
        settings = GatewaySettings.build(cfg.gateway, host=host, port=port, workers=workers,
                                         access_log=access_log)
        configure_access_log(settings.access_log)
        run(cfg, settings, config_path=str(config) if config else None, store=store)
    except ShoalError as exc:
        raise fail(exc) from None
    except OSError as exc:  # the port is taken, the host is not ours
        raise fail(_os_error(exc)) from None


def _os_error(exc: OSError) -> ShoalError:
    from shoal.errors import ConfigError

    return ConfigError(f"cannot listen: {exc.strerror or exc}; pick another --port or --host")
