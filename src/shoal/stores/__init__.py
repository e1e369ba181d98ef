"""Durable runs, steps and effects behind one seam, :class:`Store`.

Pick a backend by URL with :func:`open_store`::

    async with open_store("sqlite:///.shoal/runs.db") as store:   # the default
        ...
    open_store("memory://")                                      # in-memory SQLite (tests)
    open_store("redis://127.0.0.1:6379/0?prefix=shoal&finished_ttl_s=604800&pool_max=32")
    open_store("postgresql://user@host/db?schema=shoal&pool_max=10")

Every URL also takes ``retry_attempts=N`` (tries per operation before
:class:`StoreUnavailable`). Backend drivers are imported only when used.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shoal.clock import Clock
from shoal.errors import ConfigError
from shoal.secrets import mask_url, register_url_secrets
from shoal.stores.base import RetryPolicy, Store
from shoal.stores.records import (
    FINISHED,
    CorruptRecord,
    EffectRecord,
    RunExists,
    RunNotFound,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "DEFAULT_URL",
    "FINISHED",
    "CorruptRecord",
    "EffectRecord",
    "RetryPolicy",
    "RunExists",
    "RunNotFound",
    "RunRecord",
    "RunStatus",
    "StepRecord",
    "StepStatus",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "missing_sqlite_file",
    "open_store",
    "shown_url",
    "store_option",
]

DEFAULT_URL = "sqlite:///.shoal/runs.db"


def shown_url(url: str) -> str:
    """``url`` as it may be printed: its credentials (the password, ``password=`` and
    other credential parameters: :func:`~shoal.secrets.mask_url`), if any, as ``***``."""
    return mask_url(url)


def store_option(url: str | None) -> str:
    """`` --store URL`` for a command line that must reach the store ``url`` again ("" for
    the default store, which every command opens without the option); the password, if
    any, shown as ``***`` for the reader to fill in."""
    if url is None or url in (DEFAULT_URL, ".shoal/runs.db"):
        return ""
    shown = shown_url(url)
    return f" --store '{shown}'" if any(c in shown for c in " &;?*$") else f" --store {shown}"


def missing_sqlite_file(url: str | None) -> Path | None:
    """The SQLite file ``url`` (None: the default) names, when it does not exist yet, else
    None (another store, or a file that exists). Commands that only read check it first:
    opening the store would create an empty file, and a mistyped path would look like a
    store with nothing in it."""
    from shoal.stores.sqlite import DEFAULT_PATH

    url = url or DEFAULT_URL
    if "://" not in url:
        url = "sqlite:///" + url
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        return None
    path = parts.netloc + parts.path
    if not parts.netloc and path.startswith("/"):
        path = path[1:]
    file = Path(path or DEFAULT_PATH)
    return None if file.exists() else file


def open_store(
    url: str | None = None, *, clock: Clock | None = None, retry: RetryPolicy | None = None
) -> Store:
    """The store a URL names, not yet opened: use ``async with open_store(url) as store``.

    ``None`` means the default SQLite file ``.shoal/runs.db``; a bare path is a SQLite file.
    """
    url = url or DEFAULT_URL
    if "://" not in url:
        url = "sqlite:///" + url
    register_url_secrets(url)  # masked by value from here on, whatever quotes the URL
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    attempts = params.pop("retry_attempts", None)
    if attempts is not None:
        retry = RetryPolicy(attempts=_int(attempts, "retry_attempts"))

    if scheme in ("sqlite", "memory"):
        from shoal.stores.sqlite import DEFAULT_PATH, SQLiteStore

        if scheme == "memory":
            path = ":memory:"
        else:
            path = parts.netloc + parts.path
            if not parts.netloc and path.startswith("/"):
                path = path[1:]  # sqlite:///rel.db is relative, sqlite:////abs.db absolute
            path = path or DEFAULT_PATH
        sync = params.pop("synchronous", "full").lower()
        if sync not in ("full", "normal"):
            raise ConfigError(f"store URL: synchronous must be 'full' or 'normal', not {sync!r}")
        busy = _int(params.pop("busy_timeout_ms", "5000"), "busy_timeout_ms")
        _no_more(params, url)
        return SQLiteStore(
            path, synchronous="full" if sync == "full" else "normal", busy_timeout_ms=busy,
            clock=clock, retry=retry,
        )

    if scheme in ("redis", "rediss", "unix"):
        from shoal.stores.redis import RedisStore

        prefix = params.pop("prefix", "shoal")
        ttl = params.pop("finished_ttl_s", None)
        redis_pool = _int(params.pop("pool_max", "32"), "pool_max")
        driver_url = urlunsplit(parts._replace(query=urlencode(params)))
        if ttl is None:
            return RedisStore(driver_url, prefix=prefix, pool_max=redis_pool, clock=clock,
                              retry=retry)
        return RedisStore(
            driver_url, prefix=prefix, finished_ttl_s=_float(ttl, "finished_ttl_s"),
            pool_max=redis_pool, clock=clock, retry=retry,
        )

    if scheme in ("postgresql", "postgres"):
        from shoal.stores.postgres import PostgresStore

        schema = params.pop("schema", "shoal")
        pool_max = _int(params.pop("pool_max", "10"), "pool_max")
        dsn = urlunsplit(parts._replace(query=urlencode(params)))
        return PostgresStore(dsn, schema=schema, pool_max=pool_max, clock=clock, retry=retry)

    raise ConfigError(
        f"unknown store URL scheme {parts.scheme!r}; use sqlite:///path.db, memory://, "
        "redis://host:port/db or postgresql://user@host/db"
    )


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"store URL: {name} must be an integer, got {value!r}") from None


def _float(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"store URL: {name} must be a number, got {value!r}") from None


def _no_more(params: dict[str, str], url: str) -> None:
    if params:
        raise ConfigError(
            f"store URL {url!r}: unknown option(s) {sorted(params)}; sqlite takes "
            "synchronous, busy_timeout_ms and retry_attempts"
        )
