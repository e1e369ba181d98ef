"""The ``[alerts]`` section of shoal.toml, as typed values (see docs/observe.md).

Every threshold is off until set, except ``breaker_open``. Example::

    [alerts]
    interval_s = 15                  # evaluate every 15 s
    tokens_per_task = 50_000         # one step's tokens
    turns_per_agent = 50             # model calls in one agent invocation
    cost_per_run_usd = 2.0
    cost_per_day_usd = 50.0
    error_rate = 0.2                 # of calls ending in error over window_s (≥ 20 calls)
    rate_limited_per_minute = 30     # 429s per minute per channel, over window_s
    burn_rate = 10                   # tokens/min over the last interval ≥ 10× the baseline
    baseline_per_minute = 20_000     # the plan (unset: learned from the last hour)

    [[alerts.webhook]]
    url_env = "ALERT_WEBHOOK_URL"    # or url = "https://..."
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from shoal.errors import ConfigError
from shoal.secrets import register_secret

__all__ = ["AlertsConfig", "WebhookConfig"]


class WebhookConfig(BaseModel):
    """Where to POST alerts as JSON; retried with backoff, at most ``max_per_minute``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: SecretStr | None = None  # a webhook URL is often its own credential (Slack)
    url_env: str | None = None
    attempts: int = Field(default=4, ge=1, le=10)
    backoff_s: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)
    max_per_minute: int = Field(default=20, ge=1)

    def resolved_url(self) -> str:
        """The URL (from ``url`` or the ``url_env`` variable), registered as a secret."""
        value = self.url.get_secret_value() if self.url is not None else (
            os.environ.get(self.url_env) if self.url_env else None)
        if not value:
            where = f"${self.url_env} is not set" if self.url_env else "no url given"
            raise ConfigError(f"[[alerts.webhook]]: {where}; set url = \"https://...\" or "
                              "url_env = \"VARIABLE\" naming a set environment variable")
        if not value.startswith(("http://", "https://")):
            raise ConfigError("[[alerts.webhook]] url must start with http:// or https://")
        register_secret(value)
        return value


class AlertsConfig(BaseModel):
    """Alert thresholds, how often they are evaluated, and where alerts go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval_s: float = Field(default=15.0, gt=0)
    window_s: float = Field(default=300.0, gt=0)  # error rate and 429 rate
    tokens_per_task: int | None = Field(default=None, ge=1)
    turns_per_agent: int | None = Field(default=None, ge=1)
    cost_per_run_usd: float | None = Field(default=None, gt=0)
    cost_per_day_usd: float | None = Field(default=None, gt=0)
    error_rate: float | None = Field(default=None, gt=0, le=1)
    error_rate_min_calls: int = Field(default=20, ge=1)
    rate_limited_per_minute: float | None = Field(default=None, gt=0)
    breaker_open: bool = True
    burn_rate: float | None = Field(default=None, gt=1)
    burn_on: Literal["tokens", "cost"] = "tokens"
    baseline_per_minute: float | None = Field(default=None, gt=0)
    baseline_s: float = Field(default=3600.0, gt=0)  # learned baseline: this much history
    baseline_min_s: float = Field(default=300.0, gt=0)  # ...and no less than this
    send_resolved: bool = False
    log: bool = True
    webhook: list[WebhookConfig] = Field(default_factory=list)
