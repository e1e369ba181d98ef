"""What tokens cost: a model's prices, the cost of a :class:`~shoal.types.Usage`, what
caching saved, and projections of spend by day, month and year.

Prices are USD per million tokens, as the catalog (``shoal/catalog/models.toml``) and a
user's ``shoal.toml`` give them. A usage is priced kind by kind::

    cost = fresh input × input            (prompt tokens neither read nor written)
         + cache reads × cached_input
         + 5-minute cache writes × cache_write
         + 1-hour cache writes × cache_write_1h
         + output × output                (reasoning tokens are output tokens)

"Saved by caching" compares that with the same tokens all billed at the base input
price. It is negative when a call wrote a prefix to the cache (1.25× or 2× input on
Anthropic) that no later call read back.

Nothing here reads configuration or the network; :class:`shoal.config.ModelInfo`
builds a :class:`ModelPrice` from its catalog entry (``ModelInfo.price``).
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.errors import ConfigError
from shoal.types import Usage

__all__ = [
    "DAYS_PER_MONTH",
    "DAYS_PER_YEAR",
    "CostBreakdown",
    "ModelPrice",
    "Projection",
    "project",
    "projected_usage",
    "savings_usd",
    "uncached",
]

PER = 1_000_000  # prices are per million tokens
DAYS_PER_MONTH = 30
DAYS_PER_YEAR = 365


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """The dollars of one usage, kind by kind (``total`` is their sum)."""

    fresh_input: float = 0.0
    cache_read: float = 0.0
    cache_write: float = 0.0
    cache_write_1h: float = 0.0
    output: float = 0.0

    @property
    def total(self) -> float:
        return (self.fresh_input + self.cache_read + self.cache_write + self.cache_write_1h
                + self.output)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A model's list prices in USD per million tokens.

    ``cached_input`` is a cache read (hit); ``cache_write`` a 5-minute cache write
    (Anthropic: 1.25× input; providers that charge no write fee: = input);
    ``cache_write_1h`` a 1-hour write (Anthropic: 2× input).
    """

    input: float
    output: float
    cached_input: float
    cache_write: float
    cache_write_1h: float

    @classmethod
    def of(cls, input: float, output: float, *, cached_input: float | None = None,
           cache_write: float | None = None, cache_write_1h: float | None = None,
           anthropic: bool = False) -> ModelPrice:
        """Prices with the catalog's defaults for what is not given: reads at the input
        price (no discount known), 5-minute writes at 1.25× input on Anthropic-family
        models and at the input price elsewhere, 1-hour writes at 2× input."""
        return cls(
            input=input,
            output=output,
            cached_input=input if cached_input is None else cached_input,
            cache_write=(input * 1.25 if anthropic else input) if cache_write is None
            else cache_write,
            cache_write_1h=input * 2 if cache_write_1h is None else cache_write_1h,
        )

    def breakdown(self, usage: Usage) -> CostBreakdown:
        """The dollars of ``usage`` by token kind."""
        write_1h = min(usage.cache_write_1h_tokens, usage.cache_write_tokens)
        write_5m = usage.cache_write_tokens - write_1h
        return CostBreakdown(
            fresh_input=usage.fresh_input_tokens * self.input / PER,
            cache_read=usage.cached_input_tokens * self.cached_input / PER,
            cache_write=write_5m * self.cache_write / PER,
            cache_write_1h=write_1h * self.cache_write_1h / PER,
            output=usage.output_tokens * self.output / PER,
        )

    def cost(self, usage: Usage) -> float:
        """USD for ``usage``: each kind of token at its price (see the module docstring);
        the sum :meth:`breakdown` gives, without building it (every answer is priced)."""
        write_1h = min(usage.cache_write_1h_tokens, usage.cache_write_tokens)
        return (usage.fresh_input_tokens * self.input
                + usage.cached_input_tokens * self.cached_input
                + (usage.cache_write_tokens - write_1h) * self.cache_write
                + write_1h * self.cache_write_1h
                + usage.output_tokens * self.output) / PER


def uncached(usage: Usage) -> Usage:
    """The same tokens as if no cache had been read or written: every prompt token fresh."""
    return Usage(usage.input_tokens, usage.output_tokens, 0, usage.reasoning_tokens)


def savings_usd(usage: Usage, price: ModelPrice) -> float:
    """Dollars caching saved on ``usage`` at ``price``: its cost with every prompt token
    at the base input price, minus its cost as billed (reads at the cached price, writes
    at the write prices). Negative when cache writes were never read back."""
    return price.cost(uncached(usage)) - price.cost(usage)


@dataclass(frozen=True, slots=True)
class Projection:
    """Spend at a steady volume: per request, per day, per 30-day month, per 365-day year,
    and what the same volume would cost without caching."""

    per_request: float
    daily: float
    monthly: float
    yearly: float
    uncached_monthly: float

    @property
    def saved_monthly(self) -> float:
        return self.uncached_monthly - self.monthly


def projected_usage(input_tokens: int, output_tokens: int, *, cache_hit_rate: float = 0.0,
                    cache_write_rate: float = 0.0) -> Usage:
    """One request's usage: ``cache_hit_rate`` of its prompt read from the cache and
    ``cache_write_rate`` of it written (5-minute TTL); rates are fractions in 0..1."""
    for name, rate in (("cache hit rate", cache_hit_rate),
                       ("cache write rate", cache_write_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"{name} {rate!r} is not a fraction: give a number from 0.0 "
                              "(nothing) to 1.0 (the whole prompt), e.g. 0.8")
    if cache_hit_rate + cache_write_rate > 1.0:
        raise ConfigError(f"cache hit rate {cache_hit_rate} + cache write rate "
                          f"{cache_write_rate} exceed 1.0: together they are parts of one "
                          "prompt")
    if input_tokens < 0 or output_tokens < 0:
        raise ConfigError(f"token counts must not be negative (input {input_tokens}, "
                          f"output {output_tokens})")
    read = round(input_tokens * cache_hit_rate)
    write = min(input_tokens - read, round(input_tokens * cache_write_rate))
    return Usage(input_tokens, output_tokens, read, 0, write)


def project(price: ModelPrice, per_request: Usage, requests_per_day: float) -> Projection:
    """Spend of ``requests_per_day`` requests each using ``per_request``."""
    if requests_per_day < 0:
        raise ConfigError(f"requests per day must not be negative, not {requests_per_day}")
    one = price.cost(per_request)
    daily = one * requests_per_day
    return Projection(
        per_request=one,
        daily=daily,
        monthly=daily * DAYS_PER_MONTH,
        yearly=daily * DAYS_PER_YEAR,
        uncached_monthly=price.cost(uncached(per_request)) * requests_per_day * DAYS_PER_MONTH,
    )
