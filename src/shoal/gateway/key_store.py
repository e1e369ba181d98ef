"""Where virtual keys and their spend live: tables beside the run store's, in the same
database (SQLite by default; PostgreSQL for several replicas).

A key is stored as the SHA-256 of its secret (never the secret) and a short
non-secret ``prefix`` for display. Spend is kept per key and per period: the
``total`` row, one row per UTC day (``d2026-11-27``) and one per UTC month
(``m2026-11``), each with USD, input/output/cached tokens and requests; a settled call
moves all three rows in one statement.

URLs follow :func:`shoal.stores.open_store`: ``sqlite:///path.db`` (default
``.shoal/runs.db``), ``memory://`` (a private in-memory database, tests) and
``postgresql://user@host/db?schema=shoal&pool_max=10``. A Redis store URL has no
tables: virtual keys need SQLite or PostgreSQL.
"""

# SQL text is built only from module constants and a validated, quoted schema name;
# every value is a bind parameter.
# ruff: noqa: S608
from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shoal.errors import ConfigError, ShoalError, StoreError, StoreUnavailable
from shoal.gateway.key_db import Backend, PostgresBackend, SQLiteBackend
from shoal.gateway.keys_api import VirtualKey
from shoal.secrets import register_url_secrets

if TYPE_CHECKING:
    from shoal.types import Usage

__all__ = [
    "SECRET_PREFIX",
    "KeyRecord",
    "KeyStore",
    "Minted",
    "Period",
    "Spend",
    "hash_secret",
    "mint_secret",
    "open_key_store",
    "period_id",
    "period_ids",
]

T = TypeVar("T")
Period = Literal["total", "day", "month"]
PERIODS: tuple[Period, ...] = ("total", "day", "month")
SECRET_PREFIX = "sk-shoal-"  # noqa: S105  # a public marker, not a secret
_SHOWN = len(SECRET_PREFIX) + 6  # the display prefix: "sk-shoal-" and 6 random chars
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$")
_LIMITS = ("models", "budget_usd", "period", "rpm", "tpm", "max_concurrency")
_ROWS_PER_STATEMENT = 1000  # 7 bind parameters a row; both databases take 32,766
_COLS = ("id, name, prefix, models, budget_usd, period, rpm, tpm, max_concurrency, "
         "created_at, revoked_at, rotated_at")


# -- secrets and periods ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Minted:
    """A new secret (shown once), its hash (stored) and its display prefix."""

    secret: str
    digest: str
    prefix: str

    def __repr__(self) -> str:
        return f"Minted(prefix={self.prefix!r})"


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a key's secret (see docs/DECISIONS.md: the secret is 256 random
    bits, so a fast hash is enough; a slow KDF would only add latency per request)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def mint_secret() -> Minted:
    """``sk-shoal-`` and 32 random bytes (urlsafe base64, 43 characters)."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    return Minted(secret, hash_secret(secret), secret[:_SHOWN] + "…")


def period_id(period: Period, wall: float) -> str:
    """The spend row a call made at ``wall`` (epoch seconds) counts in; boundaries are UTC."""
    if period == "total":
        return "total"
    at = datetime.fromtimestamp(wall, UTC)
    return at.strftime("d%Y-%m-%d") if period == "day" else at.strftime("m%Y-%m")


def period_ids(wall: float) -> tuple[str, str, str]:
    """The total, day and month rows for ``wall``."""
    return "total", period_id("day", wall), period_id("month", wall)


def period_end(period: Period, wall: float) -> float | None:
    """Epoch seconds when the period containing ``wall`` ends (``None`` for total)."""
    if period == "total":
        return None
    at = datetime.fromtimestamp(wall, UTC)
    if period == "day":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.timestamp() + 86400
    year, month = (at.year + 1, 1) if at.month == 12 else (at.year, at.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


# -- records ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored key (no secret, no hash)."""

    id: str
    name: str
    prefix: str
    models: tuple[str, ...]
    budget_usd: float | None
    period: Period
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    created_at: float
    revoked_at: float | None = None
    rotated_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields (``shoal keys --json``, the admin API)."""
        return {"id": self.id, "name": self.name, "prefix": self.prefix,
                "models": list(self.models), "budget_usd": self.budget_usd,
                "period": self.period, "rpm": self.rpm, "tpm": self.tpm,
                "concurrency": self.max_concurrency, "created_at": self.created_at,
                "rotated_at": self.rotated_at, "revoked_at": self.revoked_at,
                "status": "active" if self.active else "revoked"}

    def virtual(self) -> VirtualKey:
        return VirtualKey(self.id, self.name, self.models, self.budget_usd, self.period,
                          self.rpm, self.tpm, self.max_concurrency)

    @classmethod
    def _from_row(cls, row: Sequence[Any]) -> KeyRecord:
        (kid, name, prefix, models, budget, period, rpm, tpm, conc, created, revoked,
         rotated) = row
        return cls(kid, name, prefix, tuple(m for m in models.split(",") if m), budget,
                   period, rpm, tpm, conc, created, revoked, rotated)


@dataclass(frozen=True, slots=True)
class Spend:
    """What a key spent in one period."""

    usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    requests: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"usd": self.usd, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cached_tokens": self.cached_tokens,
                "requests": self.requests}


_MAX_LIMIT = 2**63 - 1


def _check_limits(name: str, models: Sequence[str], budget_usd: float | None, period: str,
                  *, rpm: int | None, tpm: int | None, max_concurrency: int | None) -> None:
    if not _NAME.match(name):
        raise ConfigError(f"key name {name!r}: use letters, digits and _ . : @ - (at most 64, "
                          "starting with a letter or digit)")
    if period not in PERIODS:
        raise ConfigError(f"budget period {period!r}: use total, day or month")
    if budget_usd is not None and not budget_usd >= 0:
        raise ConfigError(f"budget_usd must be >= 0, got {budget_usd}")
    for label, value in (("rpm", rpm), ("tpm", tpm), ("concurrency", max_concurrency)):
        if value is not None and value < 1:
            raise ConfigError(f"{label} must be >= 1 (or unset for no limit), got {value}")
        if value is not None and value > _MAX_LIMIT:  # what a BIGINT column holds
            raise ConfigError(f"{label} must be at most {_MAX_LIMIT} (or unset for no "
                              f"limit), got {value}")
    for pattern in models:
        if not pattern or "," in pattern or pattern != pattern.strip():
            raise ConfigError(f"model pattern {pattern!r}: give comma-separated names or globs "
                              "such as 'gpt-4o,deepseek-*'")


# -- the store --------------------------------------------------------------------------


class KeyStore:
    """Keys and spend over one backend; ``async with open_key_store(url) as keys``."""

    def __init__(self, backend: Backend) -> None:
        self._db = backend

    @property
    def url(self) -> str:
        return self._db.url

    async def open(self) -> KeyStore:
        await self._guarded(self._db.open())
        return self

    async def _guarded(self, op: Awaitable[T]) -> T:
        """``op``, its driver errors as StoreError (a lost connection: StoreUnavailable),
        naming the store, so callers (the gateway: a 502) see what failed and where."""
        try:
            return await op
        except ShoalError:
            raise
        except Exception as exc:
            unique = "unique" in str(exc).lower() or "duplicate" in str(exc).lower()
            cls = StoreError if unique or isinstance(exc, ValueError) else StoreUnavailable
            raise cls(f"the key store {self.url} failed: {type(exc).__name__}: {exc}") from exc

    async def _execute(self, sql: str, args: Sequence[object]) -> int:
        return await self._guarded(self._db.execute(sql, args))

    async def _fetch(self, sql: str, args: Sequence[object]) -> list[Sequence[Any]]:
        return await self._guarded(self._db.fetch(sql, args))

    async def _execute_all(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        await self._guarded(self._db.execute_all(statements))

    async def aclose(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> KeyStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def create(
        self, name: str, *, models: Sequence[str] = (), budget_usd: float | None = None,
        period: Period = "total", rpm: int | None = None, tpm: int | None = None,
        max_concurrency: int | None = None, now: float | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key and its secret (the only time the secret exists outside the caller)."""
        _check_limits(name, models, budget_usd, period, rpm=rpm, tpm=tpm,
                      max_concurrency=max_concurrency)
        minted = mint_secret()
        record = KeyRecord("key_" + uuid.uuid4().hex[:16], name, minted.prefix, tuple(models),
                           budget_usd, period, rpm, tpm, max_concurrency,
                           time.time() if now is None else now)
        try:
            await self._execute(
                f"INSERT INTO {self._db.t}gateway_keys (id, name, prefix, secret_hash, models, "
                "budget_usd, period, rpm, tpm, max_concurrency, created_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (record.id, name, minted.prefix, minted.digest, ",".join(models), budget_usd,
                 period, rpm, tpm, max_concurrency, record.created_at))
        except StoreError as exc:
            if "unique" in str(exc).lower() or "duplicate" in str(exc).lower():
                raise ConfigError(f"an active key named {name!r} exists; revoke it first or "
                                  "choose another name") from None
            raise
        return record, minted.secret

    async def by_hash(self, digest: str) -> KeyRecord | None:
        rows = await self._fetch(
            f"SELECT {_COLS} FROM {self._db.t}gateway_keys WHERE secret_hash = ?", (digest,))
        return KeyRecord._from_row(rows[0]) if rows else None

    async def find(self, name_or_id: str) -> KeyRecord | None:
        """The key with this id, else the active key with this name, else the newest
        revoked one with it."""
        rows = await self._fetch(
            f"SELECT {_COLS} FROM {self._db.t}gateway_keys WHERE id = ? OR name = ? "
            "ORDER BY (id = ?) DESC, (revoked_at IS NULL) DESC, created_at DESC LIMIT 1",
            (name_or_id, name_or_id, name_or_id))
        return KeyRecord._from_row(rows[0]) if rows else None

    async def list(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = await self._fetch(
            f"SELECT {_COLS} FROM {self._db.t}gateway_keys{where} ORDER BY created_at, id", ())
        return [KeyRecord._from_row(r) for r in rows]

    async def count_active(self) -> int:
        rows = await self._fetch(
            f"SELECT count(*) FROM {self._db.t}gateway_keys WHERE revoked_at IS NULL", ())
        return int(rows[0][0])

    async def update(self, key_id: str, **changes: Any) -> KeyRecord | None:
        """Change an active key's limits in place (``models``, ``budget_usd``, ``period``,
        ``rpm``, ``tpm``, ``max_concurrency``; ``None`` lifts a limit). Same id, secret and
        spend; running gateways apply it within their key cache (``cache_s``). ``None``
        when no active key has this id."""
        unknown = set(changes) - set(_LIMITS)
        if unknown:
            raise ConfigError(f"cannot update {sorted(unknown)}; a key's limits are "
                              f"{', '.join(_LIMITS)}")
        record = await self.find(key_id)
        if record is None or record.id != key_id or not record.active:
            return None
        merged = {name: getattr(record, name) for name in _LIMITS} | changes
        merged["models"] = tuple(merged["models"] or ())
        _check_limits(record.name, merged["models"], merged["budget_usd"], merged["period"],
                      rpm=merged["rpm"], tpm=merged["tpm"],
                      max_concurrency=merged["max_concurrency"])
        count = await self._execute(
            f"UPDATE {self._db.t}gateway_keys SET models = ?, budget_usd = ?, period = ?, "
            "rpm = ?, tpm = ?, max_concurrency = ? WHERE id = ? AND revoked_at IS NULL",
            (",".join(merged["models"]), merged["budget_usd"], merged["period"], merged["rpm"],
             merged["tpm"], merged["max_concurrency"], key_id))
        return await self.find(key_id) if count == 1 else None

    async def revoke(self, key_id: str, *, now: float | None = None) -> bool:
        """True when the key was active; its secret stops working at once here and within
        the gateways' key cache (``cache_s``) elsewhere."""
        count = await self._execute(
            f"UPDATE {self._db.t}gateway_keys SET revoked_at = ? "
            "WHERE id = ? AND revoked_at IS NULL", (time.time() if now is None else now, key_id))
        return count == 1

    async def rotate(self, key_id: str, *, now: float | None = None) -> str | None:
        """A new secret for an active key (same id, spend and limits); the old one stops
        working. ``None`` when no active key has this id."""
        minted = mint_secret()
        count = await self._execute(
            f"UPDATE {self._db.t}gateway_keys SET secret_hash = ?, prefix = ?, rotated_at = ? "
            "WHERE id = ? AND revoked_at IS NULL",
            (minted.digest, minted.prefix, time.time() if now is None else now, key_id))
        return minted.secret if count == 1 else None

    async def add_spend(self, key_id: str, *, wall: float, usd: float, usage: Usage) -> None:
        """Add one settled call to the key's total, day and month rows (one statement)."""
        await self.add_spends([(key_id, wall, usd, usage)])

    async def add_spends(self, calls: Sequence[tuple[str, float, float, Usage]]) -> None:
        """Add settled calls ``(key_id, wall, usd, usage)`` to their keys' total, day and
        month rows: summed per row first, then upserted in one transaction, so a burst of
        settlements is one commit, not one each."""
        rows: dict[tuple[str, str], list[float]] = {}
        for key_id, wall, usd, usage in calls:
            for pid in period_ids(wall):
                row = rows.setdefault((key_id, pid), [0.0, 0, 0, 0, 0])
                row[0] += usd
                row[1] += usage.input_tokens
                row[2] += usage.output_tokens
                row[3] += usage.cached_input_tokens
                row[4] += 1
        items = list(rows.items())
        statements: list[tuple[str, list[object]]] = []
        for start in range(0, len(items), _ROWS_PER_STATEMENT):
            chunk = items[start:start + _ROWS_PER_STATEMENT]
            args: list[object] = []
            for (key_id, pid), (usd, inp, out, cached, n) in chunk:
                args += [key_id, pid, usd, int(inp), int(out), int(cached), int(n)]
            statements.append((
                f"INSERT INTO {self._db.t}gateway_key_spend (key_id, period, usd, input_tokens, "
                "output_tokens, cached_tokens, requests) VALUES "
                + ", ".join(["(?,?,?,?,?,?,?)"] * len(chunk))
                + " ON CONFLICT (key_id, period) DO UPDATE SET "
                "usd = gateway_key_spend.usd + excluded.usd, "
                "input_tokens = gateway_key_spend.input_tokens + excluded.input_tokens, "
                "output_tokens = gateway_key_spend.output_tokens + excluded.output_tokens, "
                "cached_tokens = gateway_key_spend.cached_tokens + excluded.cached_tokens, "
                "requests = gateway_key_spend.requests + excluded.requests", args))
        if len(statements) == 1:
            await self._execute(*statements[0])
        elif statements:
            await self._execute_all(statements)

    async def spend_now(self, key_id: str, wall: float | None = None) -> dict[str, Spend]:
        """The key's spend in total, today and this month (UTC)."""
        total, day, month = period_ids(time.time() if wall is None else wall)
        return {"total": await self.spend(key_id, total), "today": await self.spend(key_id, day),
                "this_month": await self.spend(key_id, month)}

    async def spend(self, key_id: str, period: str) -> Spend:
        """The key's spend in one period row (``total``, ``d2026-11-27``, ``m2026-11``)."""
        rows = await self._fetch(
            f"SELECT usd, input_tokens, output_tokens, cached_tokens, requests FROM "
            f"{self._db.t}gateway_key_spend WHERE key_id = ? AND period = ?", (key_id, period))
        if not rows:
            return Spend()
        usd, inp, out, cached, requests = rows[0]
        return Spend(float(usd), int(inp), int(out), int(cached), int(requests))


def open_key_store(url: str | None = None) -> KeyStore:
    """The key store for a store URL (``None``: the default ``sqlite:///.shoal/runs.db``),
    not yet opened."""
    from shoal.stores import DEFAULT_URL

    url = url or DEFAULT_URL
    if "://" not in url:
        url = "sqlite:///" + url
    register_url_secrets(url)  # masked by value from here on, whatever quotes the URL
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    params.pop("retry_attempts", None)
    if scheme in ("sqlite", "memory"):
        path = ":memory:"
        if scheme == "sqlite":
            path = parts.netloc + parts.path
            if not parts.netloc and path.startswith("/"):
                path = path[1:]  # sqlite:///rel.db is relative, sqlite:////abs.db absolute
            path = path or ".shoal/runs.db"
        return KeyStore(SQLiteBackend(path, params.get("synchronous", "full"),
                                _int(params.get("busy_timeout_ms", "5000"))))
    if scheme in ("postgresql", "postgres"):
        schema = params.pop("schema", "shoal")
        pool_max = _int(params.pop("pool_max", "10"))
        dsn = urlunsplit(parts._replace(query=urlencode(params)))
        return KeyStore(PostgresBackend(dsn, schema, pool_max))
    raise ConfigError(
        f"virtual keys need a SQL store, not {parts.scheme}://: use sqlite:///path.db (one "
        "host) or postgresql://user@host/db (several replicas) as --store / $SHOAL_STORE"
    )


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"key store URL: expected an integer, got {value!r}") from None
