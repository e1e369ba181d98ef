"""Every failure the gateway answers, as one neutral :class:`Failure`, rendered in the
caller's protocol.

:func:`failure_of` maps an exception once: the caller's bad input
(:class:`BadInput`), a virtual-key refusal (:mod:`shoal.gateway.keys_api`) and shoal's
error tree (:mod:`shoal.errors`, what the Router raised after it gave up). The
protocols render it: OpenAI ``{"error": {"message", "type", "param", "code"}}``,
Anthropic ``{"type": "error", "error": {"type", "message"}}``. Statuses are chosen so
the official SDKs raise their own classes (401 AuthenticationError, 429
RateLimitError, 404 NotFoundError, ...). Messages come from shoal's errors, which are
redacted of every registered secret; an upstream key never reaches a caller.
"""

from __future__ import annotations

import logging
import math
import traceback
from dataclasses import dataclass, field, replace
from typing import Literal

from shoal.errors import (
    AuthError,
    BadRequest,
    CircuitOpen,
    ConfigError,
    ContextOverflow,
    DeadlineExceeded,
    ModelRetired,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    QuotaExhausted,
    RateLimited,
    RetryDeclined,
    RunError,
    ShoalError,
    StoreError,
    StreamInterrupted,
)
from shoal.gateway.key_limits import KeyRedisUnavailable
from shoal.gateway.keys_api import (
    GatewayKeyError,
    KeyBudgetExceeded,
    KeyLimited,
    KeyModelDenied,
    KeyRejected,
)
from shoal.secrets import redact

__all__ = ["BadInput", "Failure", "Kind", "failure_of", "retry_after_header"]

log = logging.getLogger("shoal.gateway")

Kind = Literal[
    "invalid_request", "authentication", "permission", "not_found", "too_large",
    "rate_limit", "quota", "api_error", "overloaded", "timeout", "unavailable",
]


class BadInput(Exception):
    """The caller's request is wrong: a 400 (or ``status``) naming what and where."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400,
                 kind: Kind = "invalid_request", code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.kind: Kind = kind
        self.code = code


@dataclass(slots=True)
class Failure:
    """What to answer: status, neutral kind, message, and the optional fields."""

    status: int
    kind: Kind
    message: str
    code: str | None = None
    param: str | None = None
    retry_after_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    bug: bool = False  # a 500 from an unexpected exception (logged with its traceback)

    def all_headers(self) -> dict[str, str]:
        out = dict(self.headers)
        if self.retry_after_s is not None:
            out.update(retry_after_header(self.retry_after_s))
        return out


def retry_after_header(seconds: float) -> dict[str, str]:
    """``retry-after`` in whole seconds (at least 1) and ``retry-after-ms`` exactly: the
    openai and anthropic SDKs read both."""
    seconds = max(0.0, seconds)
    return {"retry-after": str(max(1, math.ceil(seconds))),
            "retry-after-ms": str(max(1, round(seconds * 1000)))}


_NO_RETRY = {"x-should-retry": "false"}  # the SDKs' own header: retrying cannot help


def _key_failure(exc: GatewayKeyError) -> Failure:
    message = redact(str(exc))
    if isinstance(exc, KeyRejected):
        return Failure(401, "authentication", message, code="invalid_api_key",
                       headers=dict(_NO_RETRY))
    if isinstance(exc, KeyModelDenied):
        return Failure(403, "permission", message, code=exc.code, headers=dict(_NO_RETRY))
    if isinstance(exc, KeyBudgetExceeded):
        return Failure(429, "quota", message, code="insufficient_quota",
                       retry_after_s=exc.retry_after_s, headers=dict(_NO_RETRY))
    if isinstance(exc, KeyLimited):
        return Failure(429, "rate_limit", message, code=exc.code,
                       retry_after_s=exc.retry_after_s if exc.retry_after_s is not None else 1.0)
    return Failure(exc.status, "authentication" if exc.status == 401 else "invalid_request",
                   message, code=exc.code)


def _upstream_failure(exc: ProviderError) -> Failure:
    """What the Router raised once it gave up on every channel and fallback."""
    message = str(exc)
    if isinstance(exc, RetryDeclined):
        # The upstream said x-should-retry: false: the caller's SDK is told the same,
        # with the status the error would have had.
        inner = (_upstream_failure(exc.original) if exc.original is not None
                 else Failure(502, "api_error", message))
        return replace(inner, message=message, headers={**inner.headers, **_NO_RETRY})
    if isinstance(exc, StreamInterrupted) and isinstance(exc.__cause__, Overloaded | RateLimited):
        # The upstream said why its stream broke (Anthropic's overloaded_error event,
        # a 429 inside the stream): the caller's error says the same kind, with the
        # whole story as its message, so a client that retries overloads knows it may.
        return replace(_upstream_failure(exc.__cause__), message=message)
    if isinstance(exc, ContextOverflow):
        return Failure(400, "invalid_request", exc.message, code="context_length_exceeded",
                       param=exc.param or "messages")
    if isinstance(exc, BadRequest):  # the envelope has the code: the message needs no suffix
        if exc.status == 413:  # the upstream refused the request's size: the caller's too
            return Failure(413, "too_large", exc.message, code="request_too_large")
        return Failure(400, "invalid_request", exc.message, code=exc.code, param=exc.param)
    if isinstance(exc, Overloaded):
        # Anthropic's 529 overloaded_error; the OpenAI wire answers it as OpenAI does, a
        # 503 with code server_is_overloaded (openai_api.error_status). Either way with
        # retry-after, as a rate limit: the upstream's, else a second (the Router has
        # already backed off and retried; the caller's SDK waits that long, not less).
        return Failure(529, "overloaded", message, code="server_is_overloaded",
                       retry_after_s=exc.retry_after if exc.retry_after is not None else 1.0)
    if isinstance(exc, RateLimited):
        return Failure(429, "rate_limit", message, code="rate_limit_exceeded",
                       retry_after_s=exc.retry_after if exc.retry_after is not None else 1.0)
    if isinstance(exc, AuthError | QuotaExhausted):
        # The gateway's upstream credentials or account, not the caller's key: a 502,
        # never a 401 (an SDK would blame the caller's key). Which channel and which key
        # variable is for the gateway's operator (its log), not for every caller.
        what = "API key" if isinstance(exc, AuthError) else "account's quota"
        log.warning("upstream refused the gateway's channel: %s", redact(message))
        return Failure(502, "api_error", f"upstream refused the gateway's channel ({what}); "
                       "the gateway's operator has the details in its log",
                       code="upstream_" + ("auth" if isinstance(exc, AuthError) else "quota"))
    if isinstance(exc, ProviderTimeout):
        return Failure(504, "timeout", message)
    return Failure(502, "api_error", message)


def failure_of(exc: BaseException) -> Failure:
    """The one mapping from an exception to what the caller is told."""
    if isinstance(exc, BadInput):
        return Failure(exc.status, exc.kind, exc.message, code=exc.code, param=exc.param)
    if isinstance(exc, GatewayKeyError):
        return _key_failure(exc)
    if isinstance(exc, ProviderError):
        return _upstream_failure(exc)
    if isinstance(exc, ModelRetired):  # what the provider itself answers for a retired model
        return Failure(404, "not_found", str(exc), code="model_not_found", param="model")
    if isinstance(exc, ConfigError):
        # What reaches here is a request the config cannot serve (a model without a keyed
        # channel, ...): the caller's request names something the gateway cannot do.
        return Failure(400, "invalid_request", str(exc))
    if isinstance(exc, CircuitOpen):
        return Failure(503, "unavailable", str(exc), retry_after_s=5.0)
    if isinstance(exc, DeadlineExceeded):
        return Failure(504, "timeout", str(exc))
    if isinstance(exc, StoreError):  # the key store (or Redis) did not answer
        # Its URL, host or driver's words are for the gateway's operator (its log), not
        # for every caller (one without a valid key included).
        log.error("virtual keys unavailable: %s", redact(str(exc)))
        which = "Redis (the keys' shared limits)" if isinstance(exc, KeyRedisUnavailable) \
            else "key store"
        return Failure(503, "unavailable", f"the gateway's {which} did not answer; retry "
                       "shortly (the gateway's operator has the details in its log)",
                       retry_after_s=1.0)
    if isinstance(exc, ShoalError | RunError):
        return Failure(502, "api_error", str(exc))
    log.error("gateway bug: %s", redact("".join(traceback.format_exception(exc))))
    return Failure(500, "api_error",
                   f"internal gateway error ({type(exc).__name__}); it is logged", bug=True)
