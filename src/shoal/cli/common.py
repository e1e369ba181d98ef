"""What every ``shoal`` command shares: exit codes, error printing, model checks.

Exit codes (the same for every command):

=====  ==================================================================
0      done
1      the run failed: a step, a batch item or the resumed run failed
2      usage or configuration error: a bad option, an unknown model, a
       missing file or run id (click's own usage errors exit 2 as well)
3      busy: another process executes the run (it holds the run's lease:
       ``RunBusy``), or took it over while this one ran (``LeaseLost``);
       nothing was run after that. Wait, or ``shoal resume --force``
=====  ==================================================================
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand

from shoal.errors import ConfigError, RunBusy, RunNotFound, ShoalError

if TYPE_CHECKING:
    from rich.console import Console

    from shoal.config import ChannelConfig, Config

__all__ = [
    "EXIT_BUSY",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Command",
    "LeaseOpt",
    "StoreOpt",
    "check_model",
    "check_models",
    "default_url",
    "exit_code",
    "fail",
    "lease_reaches_items",
    "no_store",
    "plain",
    "require_store",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUSY = 3

LeaseOpt = Annotated[float, typer.Option(
    "--lease-s", envvar="SHOAL_LEASE_S", min=0.1,
    help="Seconds the run's lease outlives this process if it is killed (renewed every "
         "lease/3); another machine can take the run over after it. Default 30.")]

class Command(TyperCommand):
    """Every ``shoal`` command's class (``app.command(..., cls=Command)``): its usage line
    names each argument as the docs and the error messages do, ``shoal show [OPTIONS]
    RUN_ID``, ``shoal run [OPTIONS] TARGET [INPUT]...``; Typer (0.29) writes a required
    argument in braces, ``{run_id}``, which reads as a placeholder left unfilled."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if not isinstance(param, TyperArgument):
                pieces.extend(param.get_usage_pieces(ctx))
                continue
            name = param.metavar or (param.name or "").upper()
            if not param.required:
                name = f"[{name}]"
            pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces


_DOUBLE_STOP = re.compile(r"(?<![.])\.\.(?=\s|$)")


def plain(text: object) -> str:
    """A message as rich prints it literally (``[models.'x']`` is not markup), with
    the doubled full stops of nested messages (``…shoal.toml.. Finished``) made single,
    and every secret masked (a record stored before redaction must not print a key)."""
    from rich.markup import escape

    from shoal.secrets import redact

    return escape(_DOUBLE_STOP.sub(".", redact(str(text))))


def exit_code(exc: BaseException) -> int:
    """2 for what the user must fix before running (config, usage, unknown run), 3 for a
    run another process executes, else 1."""
    if isinstance(exc, RunBusy):
        return EXIT_BUSY
    return EXIT_USAGE if isinstance(exc, ConfigError | RunNotFound) else EXIT_FAILED


def fail(exc: ShoalError, console: Console | None = None) -> typer.Exit:
    """Print ``error: <message>`` on stderr (or ``console``) and return the Exit to raise."""
    from rich.console import Console

    out = console or Console(stderr=True)
    out.print(f"[red]error:[/] {plain(exc)}", highlight=False, soft_wrap=True)
    return typer.Exit(exit_code(exc))


def check_models(target: Any, config: Config) -> None:
    """Every model an Agent or Flow names (models, fallbacks, the flow's default) must be
    in ``config``: a ``ConfigError`` naming the step before anything runs, not when the
    step is reached."""
    from shoal.agents.agent import Agent
    from shoal.flows.flow import Flow

    agents: list[tuple[str, Agent[Any]]] = []
    if isinstance(target, Agent):
        agents.append((f"agent {target.name!r}", target))
    elif isinstance(target, Flow):
        if target.default_model:
            check_model(config, target.default_model, f"flow {target.name!r}")
        agents += [(f"step {name!r}", step.target) for name, step in target.steps.items()
                   if isinstance(step.target, Agent)]
    for where, agent in agents:
        for model in (agent.model, *agent.fallbacks):
            if model:
                check_model(config, model, where)
        # Else the run starts, is journaled, and fails at this step (exit 1, a "shoal
        # resume" hint) for what is a configuration mistake.
        check_reachable(config, [m for m in (agent.model, *agent.fallbacks) if m], where)


def check_reachable(config: Config, named: list[str], where: str, *,
                    instead: str = "or pick another model (-m/--model); with no keys at "
                                   "all, 'smollm2-135m' runs offline") -> None:
    """One of the ``named`` models (each with its fallbacks) has a channel with its API
    key: a ``ConfigError`` naming ``where``, the variables to set and ``instead`` (what
    else will do) otherwise, before anything runs."""
    if not named or any(_reachable(config, m) for m in named):
        return
    envs = sorted({f"${ch.api_key_env}" for m in named for ch in _lanes(config, m)
                   if ch.api_key_env})
    raise ConfigError(
        f"{where}: no API key for {named[0]!r}"
        + (" or its fallbacks" if len(named) > 1 or config.model(named[0]).fallbacks
           else "")
        + f": set {' or '.join(envs) or 'api_key in shoal.toml'}, {instead}")


def _chain(config: Config, model: str) -> list[str]:
    info = config.model(model)
    return [info.name, *info.fallbacks]


def _lanes(config: Config, model: str) -> list[ChannelConfig]:
    return [ch for m in _chain(config, model) for ch in config.channels_for(m)]


def _reachable(config: Config, model: str) -> bool:
    """``model`` or one of its configured fallbacks has a channel with its key."""
    return any(config.usable(m) for m in _chain(config, model))


def check_model(config: Config, model: str, where: str) -> None:
    """``config.model(model)``, its ConfigError prefixed with ``where``."""
    try:
        config.model(model)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# -- the store a command reads ---------------------------------------------------------

StoreOpt = Annotated[str | None, typer.Option(
    "--store", envvar="SHOAL_STORE",
    help="Store URL (sqlite:///path.db, redis://..., postgresql://...). "
         "Default: $SHOAL_STORE or sqlite:///.shoal/runs.db.")]


def no_store(url: str | None) -> str | None:
    """Why there is nothing to read at ``url`` (None: the default store), when it names a
    SQLite file that does not exist; reading must not create it, and a mistyped
    ``--store`` must not look like an empty store."""
    from shoal.stores import missing_sqlite_file

    missing = missing_sqlite_file(url)
    if missing is None:
        return None
    where = "check --store / $SHOAL_STORE" if url else "`shoal run --store` makes it"
    return f"no store at {missing}: nothing was journaled there ({where})"


def require_store(url: str | None, *run_ids: str) -> None:
    why = no_store(url)
    if why is not None:
        asked = f"no run {', '.join(map(repr, run_ids))}: " if run_ids else ""
        raise fail(ConfigError(asked + why))


def default_url() -> str:
    from shoal.stores import DEFAULT_URL

    return DEFAULT_URL


def lease_reaches_items(batch_id: str, where: object, *, force: bool, lease_s: float,
                        here: str | None = None) -> None:
    """``--force`` and ``--lease-s`` reach the items of a batch that run in this process;
    a cluster's workers open their items' journals with their own defaults, so asking
    for them there is refused rather than ignored. ``here``: how to run it here instead
    (default: ``shoal resume BATCH --cluster local``)."""
    from shoal.flows.lease import DEFAULT_LEASE_S

    if where in (None, "", "local") or (not force and lease_s == DEFAULT_LEASE_S):
        return
    asked = " and ".join(o for o, on in (("--force", force),
                                         ("--lease-s/$SHOAL_LEASE_S", lease_s != DEFAULT_LEASE_S))
                         if on)
    here = here or f"shoal resume {batch_id} --cluster local ..."
    raise ConfigError(
        f"batch {batch_id!r} runs its items on the cluster {where}, whose workers take "
        f"their leases with their own defaults: {asked} would not reach them. Run it here "
        f"({here}), or without {asked}")
