"""``shoal keys create|list|show|update|revoke|rotate``: the gateway's virtual keys, managed on
the store directly (``--store URL``, ``$SHOAL_STORE``, default ``sqlite:///.shoal/runs.db``;
PostgreSQL when several gateway replicas share the keys).

``create`` and ``rotate`` print the secret once, alone on stdout (the rest goes to
stderr), so ``KEY=$(shoal keys create --name team-a)`` captures it; the store keeps
only its hash.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shoal.cli.common import Command, fail, plain
from shoal.errors import ConfigError, ShoalError

if TYPE_CHECKING:
    from rich.console import Console

    from shoal.gateway.key_store import KeyRecord, KeyStore, Spend

__all__ = ["register"]

StoreOpt = Annotated[str | None, typer.Option(
    "--store", envvar="SHOAL_STORE",
    help="Store URL (sqlite:///path.db or postgresql://...). "
         "Default: $SHOAL_STORE or sqlite:///.shoal/runs.db.")]
KeyArg = Annotated[str, typer.Argument(metavar="KEY", help="The key's name or id.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead.")]

keys_app = typer.Typer(
    name="keys", no_args_is_help=True,
    help="The gateway's virtual keys: create, list, show, update, revoke, rotate.")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app)


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


def _run(coro: Any) -> Any:
    from shoal.cli.loop import run as run_loop

    try:
        return run_loop(coro)
    except ShoalError as exc:
        raise fail(exc) from None


async def _with_store(url: str | None, fn: Any, *, create: bool = False) -> Any:
    """``fn(store)`` on the key store at ``url``; only ``create`` may make the store (a
    read must not leave an empty file behind, nor a mistyped path look empty)."""
    from shoal.gateway.key_store import open_key_store
    from shoal.stores import missing_sqlite_file

    missing = None if create else missing_sqlite_file(url)
    if missing is not None:
        raise ConfigError(f"no virtual keys: no store at {missing} (`shoal keys create` "
                          "makes the first key there; else check --store / $SHOAL_STORE)")

    async with open_key_store(url) as store:
        return await fn(store)


async def _find(store: KeyStore, name_or_id: str) -> KeyRecord:
    record = await store.find(name_or_id)
    if record is None:
        raise ConfigError(f"no virtual key named or with id {name_or_id!r} in {store.url}; "
                          "`shoal keys list --all` shows them")
    return record


def _prefix(record: KeyRecord) -> str:
    """The display prefix as is: plain() would mask it for its ``sk-`` shape, and it is
    only ``sk-shoal-`` and 6 characters of 43."""
    from rich.markup import escape

    return escape(record.prefix)


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.6f}".rstrip("0").rstrip(".")


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _row(record: KeyRecord, spend: dict[str, Spend] | None = None) -> dict[str, Any]:
    row = record.as_dict()
    if spend is not None:
        row["spend"] = {p: s.as_dict() for p, s in spend.items()}
    return row


def _print_secret(record: KeyRecord, secret: str, verb: str, json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps({**_row(record), "key": secret}))
        return
    _console(stderr=True).print(
        f"{verb} virtual key [b]{plain(record.name)}[/b] ({record.id}); the key is shown "
        "only this once, store it now:", highlight=False, soft_wrap=True)
    sys.stdout.write(secret + "\n")  # not through rich: no wrapping, no redaction


def _allowed_models(models: str) -> list[str]:
    """``--models`` as a list, each name a model of the catalog or shoal.toml and each glob
    matching one: a key limited to a typo would get 403 on every call (exit 2 instead)."""
    from shoal.config import Config
    from shoal.gateway.keys_admin import check_allowed_models

    allowed = [m.strip() for m in models.split(",") if m.strip()]
    if not allowed:
        return allowed
    try:
        config = Config.load()
    except ConfigError as exc:
        raise fail(ConfigError(f"--models is checked against the config, which does not "
                               f"load: {exc}")) from None
    try:  # the one check POST|PATCH /admin/keys makes too
        check_allowed_models(allowed, config, option="--models")
    except ConfigError as exc:
        raise fail(exc) from None
    return allowed


@keys_app.command("create", cls=Command)
def create(
    name: Annotated[str, typer.Option("--name", help="A unique name, e.g. team-a.")],
    store: StoreOpt = None,
    *,
    budget_usd: Annotated[float | None, typer.Option(
        "--budget-usd", help="Spend cap in USD per --period; unset: no cap.")] = None,
    period: Annotated[str, typer.Option(help="Budget period: total, day or month (UTC).")]
    = "total",
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute (prompt + max_tokens "
                                                 "reserved, then the real count).")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Calls in flight at once.")] = None,
    models: Annotated[str, typer.Option(help="Allowed models, comma-separated names or globs "
                                             "('gpt-4o,deepseek-*'); empty: all.")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Create a virtual key and print its secret once."""
    allowed = _allowed_models(models)
    if period not in ("total", "day", "month"):
        raise fail(ConfigError(f"--period {period!r}: use total, day or month"))

    async def op(s: KeyStore) -> tuple[KeyRecord, str]:
        return await s.create(name, models=allowed, budget_usd=budget_usd,
                              period=period,  # type: ignore[arg-type]  # checked above
                              rpm=rpm, tpm=tpm, max_concurrency=concurrency)

    record, secret = _run(_with_store(store, op, create=True))
    _print_secret(record, secret, "created", json_out)


@keys_app.command("list", cls=Command)
def list_keys(
    store: StoreOpt = None,
    *,
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """List virtual keys: name, id, prefix, limits, budget and this period's spend."""
    from rich import box
    from rich.table import Table

    from shoal.gateway.key_store import period_id

    async def op(s: KeyStore) -> list[tuple[KeyRecord, float]]:
        now = datetime.now(UTC).timestamp()
        records = await s.list(include_revoked=all_keys)
        return [(r, (await s.spend(r.id, period_id(r.period, now))).usd) for r in records]

    from shoal.stores import missing_sqlite_file

    # no store yet where none was named: no keys yet (a named one that is missing: an error)
    rows = [] if store is None and missing_sqlite_file(None) else _run(_with_store(store, op))
    if json_out:
        typer.echo(json.dumps([{**_row(r), "period_spend_usd": usd} for r, usd in rows]))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("name", "id", "prefix", "models", "spent", "budget", "rpm", "tpm",
                "concurrency", "status"):
        table.add_column(col, no_wrap=True)
    for r, usd in rows:
        table.add_row(plain(r.name), r.id, _prefix(r), plain(",".join(r.models) or "*"),
                      _money(usd), f"{_money(r.budget_usd)}/{r.period}",
                      str(r.rpm or "-"), str(r.tpm or "-"), str(r.max_concurrency or "-"),
                      "active" if r.active else "[red]revoked[/]")
    _console().print(table if rows else "no virtual keys in this store")


@keys_app.command("show", cls=Command)
def show(key: KeyArg, store: StoreOpt = None, *, json_out: JsonOpt = False) -> None:
    """Show one key: limits, status and spend (total, today, this month; UTC)."""

    async def op(s: KeyStore) -> tuple[KeyRecord, dict[str, Spend]]:
        record = await _find(s, key)
        return record, await s.spend_now(record.id)

    record, spend = _run(_with_store(store, op))
    if json_out:
        typer.echo(json.dumps(_row(record, spend)))
        return
    out = _console()
    status = "active" if record.active else f"[red]revoked {_when(record.revoked_at)}[/]"
    out.print(f"[b]{plain(record.name)}[/b] · {record.id} · {_prefix(record)} · {status}")
    out.print(f"models: {plain(', '.join(record.models) or 'all')}", highlight=False)
    out.print(f"budget: {_budget(record)} · rpm "
              f"{record.rpm or '-'} · tpm {record.tpm or '-'} · concurrency "
              f"{record.max_concurrency or '-'}", highlight=False)
    out.print(f"created {_when(record.created_at)} · rotated {_when(record.rotated_at)}",
              highlight=False)
    for label, s in spend.items():
        out.print(f"spent {label.replace('_', ' ')}: {_money(s.usd)} · "
                  f"{s.requests} request{'' if s.requests == 1 else 's'} · "
                  f"{s.input_tokens} in ({s.cached_tokens} cached) / {s.output_tokens} out",
                  highlight=False)


def _budget(record: KeyRecord) -> str:
    """"$5 per month", "$5 total" (a budget that never resets), "-" without a budget."""
    if record.budget_usd is None:
        return _money(None)
    period = "total" if record.period == "total" else f"per {record.period}"
    return f"{_money(record.budget_usd)} {period}"


def _limit(value: str | None, name: str, kind: type[int] | type[float]) -> object:
    if value is None:
        return _KEEP
    if value.lower() in ("none", "off", "-"):
        return None
    try:
        return kind(value)
    except ValueError:
        raise fail(ConfigError(f"--{name} {value!r}: give a number, or none to lift the "
                               "limit")) from None


_KEEP = object()
LimitOpt = Annotated[str | None, typer.Option(help="New value; none lifts it.")]


@keys_app.command("update", cls=Command)
def update(
    key: KeyArg,
    store: StoreOpt = None,
    *,
    budget_usd: Annotated[str | None, typer.Option(
        "--budget-usd", help="New budget in USD per period; none lifts it.")] = None,
    period: Annotated[str | None, typer.Option(help="total, day or month (UTC).")] = None,
    rpm: LimitOpt = None,
    tpm: LimitOpt = None,
    concurrency: LimitOpt = None,
    models: Annotated[str | None, typer.Option(
        help="Allowed models, comma-separated names or globs; empty: all.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Change a key's limits in place: same secret, id and spend."""
    changes: dict[str, Any] = {
        "budget_usd": _limit(budget_usd, "budget-usd", float), "rpm": _limit(rpm, "rpm", int),
        "tpm": _limit(tpm, "tpm", int), "max_concurrency": _limit(concurrency, "concurrency",
                                                                  int)}
    changes = {k: v for k, v in changes.items() if v is not _KEEP}
    if period is not None:
        changes["period"] = period
    if models is not None:
        changes["models"] = _allowed_models(models)
    if not changes:
        raise fail(ConfigError("nothing to update: give --budget-usd, --period, --rpm, --tpm, "
                               "--concurrency or --models"))

    async def op(s: KeyStore) -> KeyRecord:
        record = await _find(s, key)
        updated = await s.update(record.id, **changes)
        if updated is None:
            raise ConfigError(f"the key {record.name!r} ({record.id}) is revoked; create a "
                              "new one")
        return updated

    record = _run(_with_store(store, op))
    if json_out:
        typer.echo(json.dumps(_row(record)))
        return
    _console().print(f"updated {plain(record.name)} ({record.id}): budget "
                     f"{_budget(record)} · rpm "
                     f"{record.rpm or '-'} · tpm {record.tpm or '-'} · concurrency "
                     f"{record.max_concurrency or '-'} · models "
                     f"{plain(', '.join(record.models) or 'all')}", highlight=False)


@keys_app.command("revoke", cls=Command)
def revoke(key: KeyArg, store: StoreOpt = None) -> None:
    """Revoke a key: its secret stops working (within a second on running gateways)."""

    async def op(s: KeyStore) -> tuple[KeyRecord, bool]:
        record = await _find(s, key)
        return record, await s.revoke(record.id)

    record, done = _run(_with_store(store, op))
    state = "revoked" if done else "was already revoked:"
    _console().print(f"{state} {plain(record.name)} ({record.id})", highlight=False)


@keys_app.command("rotate", cls=Command)
def rotate(key: KeyArg, store: StoreOpt = None, *, json_out: JsonOpt = False) -> None:
    """Give a key a new secret (same id, limits and spend); the old secret stops working."""

    async def op(s: KeyStore) -> tuple[KeyRecord, str]:
        record = await _find(s, key)
        secret = await s.rotate(record.id)
        if secret is None:
            raise ConfigError(f"the key {record.name!r} ({record.id}) is revoked; create a "
                              "new one")
        return await _find(s, record.id), secret

    record, secret = _run(_with_store(store, op))
    _print_secret(record, secret, "rotated", json_out)
