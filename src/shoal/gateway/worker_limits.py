"""Limits across ``--workers N`` when nothing shares them.

Each worker process has its own Router, so a channel's local limiter would let every
worker use the whole cap: four workers on a ``max_concurrency = 5`` channel put up to
20 calls in flight at a provider that allows 5 (LiteLLM's N× overshoot). Shared
channels (``shared = true`` with ``redis_url``) hold one pool across processes and
hosts. For the others this module splits each explicit limit (``max_concurrency``,
``rpm``, ``tpm``) over the workers: worker ``i`` of ``n`` gets ``limit // n``, plus one
for the first ``limit % n`` workers, so the shares add up to the limit exactly.

A split pool is exact but less flexible than a shared one: the kernel spreads
connections, not calls, so one busy connection's worker may wait on its share while
another's sits idle. The gateway says so at start and names the fix.

Per-key limits (rpm, tpm, concurrency, and budget reservations of calls in flight)
live in the worker that admits the call unless Redis shares them, and they cannot be
split like a channel's: a gateway started without keys turns them on when the first
key is created (:class:`~shoal.gateway.keys_watch.WatchedKeys`), in each worker on its
own. So several workers need ``redis_url`` whether or not keys exist at start
(:func:`workers_need_redis`, checked before any worker starts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shoal.errors import ConfigError

if TYPE_CHECKING:
    from shoal.config import ChannelConfig, Config

__all__ = ["share", "split_channels", "split_notice", "workers_need_redis"]

_LIMITS = ("max_concurrency", "rpm", "tpm")


def share(limit: int, index: int, workers: int) -> int:
    """Worker ``index``'s part of ``limit`` (the parts of all workers add up to it)."""
    return limit // workers + (1 if index < limit % workers else 0)


def _split(ch: ChannelConfig) -> bool:
    """A channel whose explicit limits a worker must share: not shared through Redis,
    a remote provider (a ``local://`` model runs in each worker, its cap its own), and
    usable (a catalog channel without its API key carries no calls)."""
    return (not ch.shared and not ch.base_url.startswith("local://")
            and any(getattr(ch, f) is not None for f in _LIMITS) and ch.has_key())


def _check(config: Config, workers: int) -> None:
    small = [f"{name}.{f} = {getattr(ch, f)}" for name, ch in sorted(config.channels.items())
             if _split(ch) for f in _LIMITS
             if getattr(ch, f) is not None and getattr(ch, f) < workers]
    if small:
        raise ConfigError(
            f"with --workers {workers} and no shared limiter, each worker gets a part of a "
            f"channel's limits, and these are too small to split: {', '.join(small)}. "
            "Share them instead (redis_url in shoal.toml and shared = true on the channel: "
            "docs/gateway.md, Replicas), or run fewer workers")


def split_channels(config: Config, index: int, workers: int) -> Config:
    """``config`` (changed in place) as worker ``index`` of ``workers`` runs it: every
    unshared channel's explicit limits replaced by this worker's share. ``ConfigError``
    when a limit is smaller than the number of workers (a worker would get none)."""
    if workers == 1:
        return config
    _check(config, workers)
    for name, ch in list(config.channels.items()):
        if _split(ch):
            config.channels[name] = ch.model_copy(update={
                f: share(getattr(ch, f), index, workers)
                for f in _LIMITS if getattr(ch, f) is not None})
    return config


def split_notice(config: Config, workers: int) -> str | None:
    """The start-up line saying which limits are split, or None when none are."""
    if workers == 1:
        return None
    _check(config, workers)
    parts = []
    for name, ch in sorted(config.channels.items()):
        if _split(ch):
            limits = ", ".join(
                f"{f} {getattr(ch, f)} → "
                + "+".join(str(share(getattr(ch, f), i, workers)) for i in range(workers))
                for f in _LIMITS if getattr(ch, f) is not None)
            parts.append(f"{name} ({limits})")
    if not parts:
        return None
    fix = ("set shared = true on these channels (redis_url is set)" if config.redis_url
           else "set redis_url and shared = true on these channels")
    return (f"shoal gateway: {workers} workers, no shared limiter: channel limits split "
            f"per worker so their sum holds: {'; '.join(parts)}. For one pool across "
            f"workers, {fix}")


def workers_need_redis(workers: int, redis_url: str | None) -> None:
    """Refuse several workers without Redis, keys or none: each worker would enforce
    every virtual key's rpm, tpm and concurrency on its own (N× the limit) and reserve
    budget only for its own calls in flight. Keys that exist at start are not the only
    ones: a gateway started without any asks for one from the first ``shoal keys
    create`` on, without a restart, and each worker would then count on its own."""
    if workers > 1 and redis_url is None:
        raise ConfigError(
            f"--workers {workers} needs redis_url in shoal.toml: without Redis each of the "
            f"{workers} worker processes enforces every virtual key's rpm, tpm and "
            f"concurrency on its own ({workers}× the limit) and reserves budget only for its "
            "own calls, also for keys created while the gateway runs. Set redis_url = "
            '"redis://HOST:6379/0" at the top of shoal.toml (docs/gateway.md, Replicas), '
            "or run --workers 1")
