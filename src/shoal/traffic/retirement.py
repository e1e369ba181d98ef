"""Retired models: refused before sending, announced before the day.

A provider retires a model on a published date (Anthropic: claude-sonnet-4-5 on
2026-11-30); from that day its API answers 404 and a service still naming the model
fails on every call. The catalog's ``retires`` (and ``replaced_by``) carry the date, and
the Router applies it when it resolves a model's chain (the model and its fallbacks):

- from :data:`WARN_DAYS` days before: one warning per model and Router on the
  ``shoal`` logger, naming the date and the successor (the provider's SDK warns on every
  call; once is enough to be seen);
- from the day itself (UTC, by the Router's clock): a retired model is dropped from the
  chain, with one warning, and the call goes to the next model of the chain (its
  fallbacks: adding the successor there before the day makes the move seamless); when
  no model is left, :class:`~shoal.errors.ModelRetired` is raised before any request is
  sent (the provider would answer 404, which no retry mends).

Dates are read off ``clock.wall()``, so a :class:`~shoal.clock.VirtualClock` decides them
in tests; a chain that holds a dated model is resolved again when the UTC day turns
(:func:`day_of` says when), the rest stay cached.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from shoal.clock import utc_date
from shoal.errors import ModelRetired

if TYPE_CHECKING:
    from shoal.clock import Clock
    from shoal.config import ModelInfo

__all__ = ["WARN_DAYS", "Warned", "current_chain", "day_of", "is_retired", "retired_error"]

WARN_DAYS = 30
_DAY_S = 86_400.0
_log = logging.getLogger("shoal")
Warned = set[tuple[str, str, str, datetime.date]]  # (what, model, asked for, date)
T = TypeVar("T")


def day_of(clock: Clock) -> tuple[datetime.date, float]:
    """Today's UTC date by ``clock``, and the clock's ``now()`` when that day ends."""
    wall, today = clock.wall(), utc_date(clock)
    midnight = datetime.datetime.combine(today, datetime.time(), datetime.UTC).timestamp()
    return today, clock.now() + (midnight + _DAY_S - wall)


def is_retired(info: ModelInfo, today: datetime.date) -> bool:
    """Whether ``info``'s provider has retired it by ``today`` (its day included)."""
    return info.retires is not None and info.retires <= today


def _successor(info: ModelInfo) -> str:
    if info.replaced_by:
        return (f"move to {info.replaced_by!r} (name it instead, or add it to the "
                f"fallbacks of {info.name!r} in shoal.toml)")
    return "move to a newer model of the same provider (`shoal models` lists them)"


def retired_error(info: ModelInfo, today: datetime.date) -> ModelRetired:
    """The error for a call to ``info`` on or after its ``retires`` date."""
    assert info.retires is not None
    provider = info.provider or "its provider"
    return ModelRetired(
        f"model {info.name!r} was retired by {provider} on {info.retires.isoformat()} "
        f"(today is {today.isoformat()} UTC): its API answers 404 not_found for it now, so "
        f"shoal sends nothing. {_successor(info).capitalize()}. If the provider still "
        f"serves it, set [models.{info.name!r}] retires to a later date in shoal.toml.",
        model=info.name, retired_on=info.retires.isoformat(), replaced_by=info.replaced_by)


def _warn_once(warned: Warned, what: str, info: ModelInfo, asked: ModelInfo,
               message: str) -> None:
    assert info.retires is not None
    key = (what, info.name, asked.name, info.retires)
    if key not in warned:
        warned.add(key)
        _log.warning(message)


def current_chain(chain: Sequence[tuple[ModelInfo, T]], today: datetime.date,
                  warned: Warned) -> list[tuple[ModelInfo, T]]:
    """``chain`` (the model asked for, then its fallbacks) as of ``today``, without its
    retired models; :class:`ModelRetired` (for the model asked for) when none is left.
    Warns about each one dropped and each retiring within :data:`WARN_DAYS` days, once
    per chain and model while ``warned`` (the Router's record) remembers it."""
    asked = chain[0][0]
    kept = [(info, lanes) for info, lanes in chain if not is_retired(info, today)]
    if not kept:
        raise retired_error(asked, today)
    for info, _ in chain:
        retires = info.retires
        if retires is None:
            continue
        days = (retires - today).days
        if days <= 0 and info is asked:
            _warn_once(warned, "dropped", info, asked, (
                f"model {info.name!r} was retired on {retires.isoformat()}: its calls go "
                f"to its fallback {kept[0][0].name!r}; {_successor(info)}"))
        elif days <= 0:
            _warn_once(warned, "dropped", info, asked, (
                f"fallback model {info.name!r} was retired on {retires.isoformat()}: it is "
                f"left out of the fallbacks of {asked.name!r}; {_successor(info)}"))
        elif days <= WARN_DAYS:
            _warn_once(warned, "soon", info, asked, (
                f"model {info.name!r} retires on {retires.isoformat()} (in {days} day"
                f"{'' if days == 1 else 's'}); from then on shoal refuses it (the provider "
                f"answers 404): {_successor(info)}"))
    return kept
