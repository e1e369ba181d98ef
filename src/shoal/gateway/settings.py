"""The gateway's own settings: the ``[gateway]`` table of shoal.toml, CLI flags over it.

Everything about *routing* (channels, limits, retries, fallbacks) is the Router's and
lives in ``[channels.*]`` / ``[models.*]``; these are only the HTTP server's knobs.

.. code-block:: toml

    [gateway]
    host = "127.0.0.1"
    port = 8080
    workers = 1                 # processes sharing the port (SO_REUSEPORT); more
                                # than 1 needs the top-level redis_url
    max_body_bytes = 4194304    # larger request bodies get a 413
    drain_timeout_s = 30        # SIGTERM: finish in-flight calls and streams this long
    request_timeout_s = 600     # one call's deadline (the Router's deadline_s); unset:
                                # the retry policy's
    access_log = true           # one JSON line per request on stderr (never prompts)
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shoal.errors import ConfigError

__all__ = ["DEFAULT_MAX_BODY", "GatewaySettings", "is_loopback"]

DEFAULT_MAX_BODY = 4 * 1024 * 1024


class GatewaySettings(BaseModel):
    """The server's knobs, validated (a bad value is a ConfigError naming the field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=256)
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY, ge=1024)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    request_timeout_s: float | None = Field(default=None, gt=0)
    access_log: bool = True

    @classmethod
    def build(cls, table: dict[str, Any] | None = None, **overrides: Any) -> GatewaySettings:
        """``table`` (shoal.toml's ``[gateway]``) with the non-None ``overrides`` on top."""
        data = dict(table or {})
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except ValidationError as exc:
            from shoal.config import validation_message  # the wording of shoal.toml's tables

            raise ConfigError(validation_message("[gateway] settings", exc,
                                                  cls.model_fields)) from None


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
