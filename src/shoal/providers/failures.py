"""Map every provider failure, once, into :mod:`shoal.errors`.

One function for HTTP error responses (every envelope shape of PROVIDERS.md §6.7),
one for error payloads inside a 200 stream, one for a 2xx body that is no answer (empty,
or a proxy's page); the transport exceptions' mapping (:mod:`shoal.providers.transport`)
and the Retry-After parser (``retry-after-ms``, seconds, HTTP-date,
:mod:`shoal.providers.retry_after`) are re-exported from here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from shoal.errors import (
    AuthError,
    BadRequest,
    ContextOverflow,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
    RetryDeclined,
    StreamInterrupted,
)
from shoal.providers.retry_after import header as _header
from shoal.providers.retry_after import parse_retry_after
from shoal.providers.transport import error_from_transport, transport_errors

if TYPE_CHECKING:
    from shoal.types import Usage

__all__ = [
    "error_from_finish",
    "error_from_response",
    "error_from_stream_payload",
    "error_from_transport",
    "interrupted",
    "is_error_body",
    "not_an_answer",
    "parse_retry_after",
    "transport_errors",
]

# Provider codes/types meaning "no money or quota left": retrying the channel is futile.
_QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "exceeded_current_quota_error",
        "billing_error",
        "insufficient_balance",
        "1113",  # Zhipu: arrears / no balance
        "1304",  # Zhipu: the day's call limit is reached (until tomorrow)
        "1308",  # Zhipu: usage cap reached until reset
        "1310",
        "1008",  # MiniMax: insufficient balance
        "minimax:2056",  # MiniMax: the plan's usage limit exceeded
    }
)
_QUOTA_TEXT = re.compile(
    r"insufficient[ _](?:quota|balance)|exceeded (?:your )?current quota|balance (?:is )?"
    r"(?:insufficient|exhausted)|credit balance|out of credits",
    re.IGNORECASE,
)
_CONTEXT_CODES = frozenset({"context_length_exceeded", "1261", "model_context_window_exceeded"})
_CONTEXT_TEXT = re.compile(
    r"context length|context window|maximum context|prompt is too long|too many tokens|"
    r"reduce the length|exceeds? the (?:model's )?(?:maximum|context)|input is too long|"
    r"exceeded model token limit",  # Moonshot: a 400 invalid_request_error with no code
    re.IGNORECASE,
)
_AUTH_CODES = frozenset({"authentication_error", "permission_error", "1004", "2049",
                         "API_KEY_INVALID"})  # MiniMax 1004/2049, Gemini's ErrorInfo reason
_OVERLOAD_TYPES = frozenset({"overloaded_error", "engine_overloaded_error", "1305", "1312"})
_RATE_CODES = frozenset(
    {"rate_limit_exceeded", "rate_limit_error", "rate_limit_reached_error", "slow_down",
     "1302", "1303", "1002",
     "minimax:1039", "minimax:1041", "minimax:2045"}  # MiniMax: TPM, connections, growth
)


def _envelope(body: Any) -> tuple[str, str | None]:
    """(message, code-or-type) from any known error envelope."""
    if isinstance(body, list) and body:
        body = body[0]  # Gemini wraps the error object in an array
    if not isinstance(body, dict):
        return "", None
    base = body.get("base_resp")
    if isinstance(base, dict) and base.get("status_code") not in (None, 0):
        return str(base.get("status_msg", "")), str(base.get("status_code"))
    err = body.get("error", body)
    if isinstance(err, str):
        return err, None
    if not isinstance(err, dict):
        return "", None
    message = str(err.get("message") or err.get("msg") or "")
    code = err.get("code")
    etype = err.get("type") or err.get("status")
    # Prefer the most specific signal: a string code, else the type.
    chosen = code if isinstance(code, str) and code else etype
    if chosen is None and code is not None:
        chosen = code
    return message, (str(chosen) if chosen is not None else None)


def _codes(body: Any) -> set[str]:
    """Every code/type string present, to test against the classification sets."""
    found: set[str] = set()
    if isinstance(body, list) and body:
        body = body[0]
    if not isinstance(body, dict):
        return found
    base = body.get("base_resp")
    if isinstance(base, dict) and base.get("status_code") not in (None, 0):
        found.add(str(base["status_code"]))
        found.add(f"minimax:{base['status_code']}")  # MiniMax's own meaning (_TYPE_STATUS)
    err = body.get("error", body)
    if isinstance(err, dict):
        for key in ("code", "type", "status"):
            value = err.get(key)
            if value is not None:
                found.add(str(value))
        coded = _MINIMAX_IN_TEXT.search(str(err.get("message") or ""))
        if "http_code" in err and coded:  # MiniMax's envelope: "… (2056)" ends the message
            found.update((coded.group(1), f"minimax:{coded.group(1)}"))
    return found


_MINIMAX_IN_TEXT = re.compile(r"\((\d{4,5})\)\s*$")


_GOOGLE_DELAY = re.compile(r"^(\d+(?:\.\d+)?)s$")


def _google_details(body: Any) -> tuple[set[str], float | None]:
    """Google's ``error.details``: the ErrorInfo reasons, and RetryInfo's ``retryDelay``
    ("30s") in seconds (Gemini sends no Retry-After header)."""
    if isinstance(body, list) and body:
        body = body[0]
    err = body.get("error") if isinstance(body, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    reasons: set[str] = set()
    delay: float | None = None
    for item in details if isinstance(details, list) else ():
        if not isinstance(item, dict):
            continue
        kind = str(item.get("@type", ""))
        if kind.endswith("google.rpc.ErrorInfo") and isinstance(item.get("reason"), str):
            reasons.add(item["reason"])
        elif kind.endswith("google.rpc.RetryInfo"):
            match = _GOOGLE_DELAY.match(str(item.get("retryDelay", "")))
            if match:
                delay = float(match.group(1))
    return reasons, delay


def _hint_status(codes: set[str], fallback: int) -> int:
    """The HTTP status an error type stands for (Anthropic's types, a numeric code)."""
    for code in codes:
        if code in _TYPE_STATUS:
            return _TYPE_STATUS[code]
        if code.isdigit() and 400 <= int(code) < 600:
            return int(code)  # flat vLLM / Gemini envelopes carry the status as code
    return fallback


_TYPE_STATUS = {
    "invalid_request_error": 400, "BadRequestError": 400, "authentication_error": 401,
    "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
    "rate_limit_error": 429, "api_error": 500, "server_error": 500,
    "overloaded_error": 529, "timeout_error": 504,
    # MiniMax base_resp codes, which arrive inside an HTTP 200 (PROVIDERS.md §3): invalid
    # params and sensitive input/output are the caller's to fix (never retried), a
    # timeout, an unknown or internal error are worth another attempt. Rate limits (1002,
    # 1039 TPM, 1041 connections, 2045 growth), auth (1004, 2049) and balance (1008,
    # 2056 the plan's usage) are matched by code in _classify.
    "minimax:2013": 400, "minimax:1026": 400, "minimax:1027": 400,
    "minimax:1001": 408, "minimax:1000": 500, "minimax:1013": 500, "minimax:1024": 500,
    "minimax:1033": 500,
    # Zhipu business codes, for when one arrives inside a 200 (a stream's error chunk):
    # content safety (1301), unknown model (1211) and invalid parameters (1214) are the
    # caller's to fix (docs.z.ai/api-reference/api-code).
    "1301": 400, "1211": 400, "1214": 400,
}


def _classify(
    status: int, text: str, codes: set[str], fields: dict[str, Any], *, provider: str,
    key_env: str | None, where: str = "", text_quota: bool = True,
) -> ProviderError:
    """One rule set for an error answer; ``status`` is the (hinted) HTTP status.
    ``text_quota=False``: the provider said when to retry (Google's RetryInfo), so
    quota wording in the message ("You exceeded your current quota") names a rate
    window that reopens, not an exhausted balance; only a quota *code* says that."""
    quota_text = (text_quota and 400 <= status < 500
                  and _QUOTA_TEXT.search(text))  # e.g. Anthropic's 400
    if status == 402 or codes & _QUOTA_CODES or quota_text:
        return QuotaExhausted(
            f"quota or balance exhausted on {provider}{where}: {text}. Add credit or raise "
            "the quota; shoal will not retry this channel",
            **fields,
        )
    if status in (401, 403) or codes & _AUTH_CODES:
        hint = f" (the key comes from ${key_env})" if key_env else ""
        return AuthError(
            f"{provider} rejected the API key{hint}: {text}. Check the key and its permissions",
            **fields,
        )
    if status == 529 or codes & _OVERLOAD_TYPES:
        return Overloaded(f"{provider} overloaded{where}: {text}", **fields)
    if status == 429 or codes & _RATE_CODES:
        return RateLimited(f"{provider} rate limited{where}: {text}", **fields)
    if status == 408:
        return ProviderTimeout(f"{provider} timed out the request{where}: {text}", **fields)
    if status >= 500 or status == 409:
        return ProviderUnavailable(f"{provider} unavailable{where}: {text}", **fields)
    said = text.rstrip(".")  # the advice below starts a sentence of its own
    if status == 413 or "request_too_large" in codes:
        # The request's bytes (Anthropic: over 32 MB, refused before the model sees it),
        # not its tokens: a model with a larger context window would refuse it too.
        return BadRequest(
            f"{provider} refused the request as too large (HTTP 413){where}: {said}. Send "
            "less: fewer or smaller images and documents, or a shorter conversation",
            **fields)
    if codes & _CONTEXT_CODES or _CONTEXT_TEXT.search(text):
        return ContextOverflow(
            f"prompt too long for the model on {provider}: {said}. Trim the conversation or "
            "pick a model with a larger context window",
            **fields,
        )
    if 200 <= status < 300:
        return ProviderUnavailable(f"{provider} returned an error{where or ' in a 200 response'}"
                                   f": {text}", **fields)
    wire = fields["status"]  # ``status`` is the one an error inside a 2xx stands for
    how = (f" (HTTP {wire}){where}" if not 200 <= wire < 300
           else where or f" in an HTTP {wire} answer")
    return BadRequest(f"{provider} rejected the request{how}: {text}", **fields)


_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)
_TAG = re.compile(r"<[^>]*>")


def _readable(body_text: str) -> str:
    """What a person would read first of an error body that is no envelope, in 200
    characters: an HTML page's title (else its text without tags), whitespace folded
    (a proxy's 503 page otherwise filled the message with markup and line breaks)."""
    text = body_text.strip()
    if text[:1] == "<":
        title = _TITLE.search(text)
        text = title[1] if title and title[1].strip() else _TAG.sub(" ", text)
    return " ".join(text.split())[:200]


# Media types that claim the protocol: a body of one of these that does not parse is a
# broken answer (billed); a page of any other type is no answer at all.
_PROTOCOL_TYPES = ("json", "event-stream")


def not_an_answer(provider: str, status: int, content_type: str | None, text: str, *,
                  stream: bool = False) -> ProviderError | None:
    """The error for a 2xx body that no model made, or None when the body claims to be
    an answer (its type names JSON or an event stream, or it has none and looks like no
    page): then a body that does not parse is the caller's ``MalformedResponse``, a
    broken answer the provider billed.

    An empty body (a 204, a load balancer's empty 200) and a page of another type (a
    proxy's or firewall's ``text/html`` or ``text/plain``: "Access denied", Envoy's
    "upstream connect error") are a ``ProviderUnavailable`` keeping ``status``: retried
    like a server error, and never charged as waste, since no model answered."""
    media = (content_type or "").partition(";")[0].strip().lower()
    who = provider or "the provider"
    if not text.strip():
        return ProviderUnavailable(
            f"{who} answered HTTP {status} with an empty body: no answer came, so "
            "nothing is charged for it; retried like a server error. If it keeps "
            "happening, something between shoal and the provider (a proxy or load "
            "balancer) is answering in its place",
            status=status, provider=provider, code="empty_body")
    looks_like_page = text.lstrip()[:1] == "<"
    if any(kind in media for kind in _PROTOCOL_TYPES) or not (media or looks_like_page):
        return None
    expected = "an event stream" if stream else "a JSON answer"
    return ProviderUnavailable(
        f"{who} answered HTTP {status} with a {media or 'HTML'} page, not {expected}: "
        f"{_readable(text)!r}. Something between shoal and the provider answered in its "
        "place (a proxy, a firewall, a captive portal, or a base_url that is not the "
        "API), so no model made it and nothing is charged; retried like a server error. "
        "If it persists, check the channel's base_url and the network path",
        status=status, provider=provider, body=text, code="not_an_answer")


def is_error_body(body: Any) -> bool:
    """True when a decoded JSON body is an error envelope (PROVIDERS.md §6.7), not an
    answer: ``{error: …}`` (truthy), ``{type: "error"}``, a Gemini array of those, or
    MiniMax ``base_resp`` with a non-zero ``status_code``."""
    if isinstance(body, list):
        return bool(body) and isinstance(body[0], dict) and bool(body[0].get("error"))
    if not isinstance(body, dict):
        return False
    base = body.get("base_resp")
    if isinstance(base, dict) and base.get("status_code") not in (None, 0, "0"):
        return True
    return bool(body.get("error")) or body.get("type") == "error" or body.get("object") == "error"


def error_from_response(
    status: int,
    body_text: str,
    headers: Mapping[str, str],
    *,
    provider: str,
    now_wall: float,
    key_env: str | None = None,
) -> ProviderError:
    """The shoal error for a non-2xx HTTP answer (or a 200 carrying an error body)."""
    try:
        body: Any = json.loads(body_text) if body_text.strip() else None
    except ValueError:
        body = None
    message, code = _envelope(body)
    text = message or _readable(body_text) or f"HTTP {status}"
    fields: dict[str, Any] = {
        "status": status,
        "provider": provider,
        "retry_after": parse_retry_after(headers, now_wall),
        "body": body_text,
        "code": code,
    }
    if 300 <= status < 400:
        # Not followed: aiohttp re-sends every header but Authorization to a new origin
        # (x-api-key, a channel's credential headers). An LLM API never redirects a POST.
        where_to = _header(headers, "location") or "nowhere"
        return BadRequest(
            f"{provider} answered HTTP {status}, a redirect to {where_to!r}: shoal does not "
            "follow redirects (the API key would go along to another address); set the "
            "channel's base_url to the address it should be", **fields)
    codes = _codes(body)
    reasons, delay = _google_details(body)
    codes |= reasons  # Gemini: a bad key is 400 with reason API_KEY_INVALID (→ AuthError)
    if fields["retry_after"] is None:
        fields["retry_after"] = delay  # Gemini: the wait is in RetryInfo, not a header
    # An error envelope inside a 2xx (a JSON answer to a stream request, MiniMax base_resp)
    # is classified by the status its type stands for; the error keeps status 200.
    rule_status = _hint_status(codes, status) if 200 <= status < 300 else status
    if fields["retry_after"] is None and codes & {"1308", "1310"}:
        fields["retry_after"] = _zhipu_reset(text, now_wall)  # Zhipu: in the message only
    # Gemini's free-tier per-minute quota answers 429 RESOURCE_EXHAUSTED "You exceeded
    # your current quota" *with* a RetryInfo delay: wait and retry (a rate limit).
    err = _classify(rule_status, text, codes, fields, provider=provider, key_env=key_env,
                    text_quota=delay is None)
    return _declined(err, headers)


# Zhipu's plan caps (1308, 1310) say when they end in the message only: "… Your limit will
# reset at 2026-10-13 01:47:29", Beijing time without an offset (as integrators observe).
_ZHIPU_RESET = re.compile(r"reset at (\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2})")
_BEIJING = timezone(timedelta(hours=8))


def _zhipu_reset(text: str, now_wall: float) -> float | None:
    """Seconds until the reset time a Zhipu plan-cap message names (0 when past)."""
    match = _ZHIPU_RESET.search(text)
    if match is None:
        return None
    try:
        when = datetime.fromisoformat(f"{match[1]}T{match[2]}").replace(tzinfo=_BEIJING)
    except ValueError:
        return None
    return max(0.0, when.timestamp() - now_wall)


def _declined(err: ProviderError, headers: Mapping[str, str]) -> ProviderError:
    """``err``, or a RetryDeclined from it when it is retryable and the answer said
    ``x-should-retry: false``. ``true`` changes nothing: shoal already retries 408, 409,
    429 and 5xx, and a request error, a key or a quota is not cured by retrying (the
    SDKs, which would retry one, give up after two retries)."""
    flag = (_header(headers, "x-should-retry") or "").strip().lower()
    if flag != "false" or not err.retryable:
        return err
    declined = RetryDeclined(
        f"{err.message} (the provider said x-should-retry: false, so shoal does not retry)",
        **err._fields(), original=err)
    declined.__cause__ = err
    return declined


def error_from_stream_payload(payload: Any, *, provider: str, raw: str,
                              key_env: str | None = None) -> ProviderError:
    """The error object that arrived inside an HTTP 200 stream, mapped as the error it
    names (``overloaded_error`` → Overloaded, ``api_error`` → ProviderUnavailable, …);
    ``status`` stays 200. Adapters raise it as is before any output, and as the cause of
    a :class:`StreamInterrupted` after output began (see :func:`interrupted`)."""
    message, code = _envelope(payload)
    codes = _codes(payload)
    text = message or raw[:200]
    fields: dict[str, Any] = {"status": 200, "provider": provider, "body": raw, "code": code}
    return _classify(_hint_status(codes, 200), text, codes, fields, provider=provider,
                     key_env=key_env, where=" inside the stream")


# Finish reasons that end no answer: the provider cut it for a failure of its own, so it
# is incomplete and retried like a 5xx (PROVIDERS.md §3), never returned as a success.
_FAILED_FINISH = {
    "insufficient_system_resource": "DeepSeek ran out of inference capacity",
    "network_error": "Zhipu's model inference failed",
}


def error_from_finish(raw: str | None, *, provider: str, usage: Usage | None,
                      body: str = "") -> ProviderError | None:
    """The error an answer's ``finish_reason`` stands for (DeepSeek's
    ``insufficient_system_resource``, Zhipu's ``network_error``: a ProviderUnavailable
    carrying the billed ``usage``), or None when the reason ends a real answer."""
    what = _FAILED_FINISH.get(raw or "")
    if what is None:
        return None
    return ProviderUnavailable(
        f"{provider} cut the answer short (finish_reason {raw!r}: {what}); the partial "
        "answer is not used, and the call is retried like a server error",
        status=200, provider=provider, code=raw, usage=usage, body=body)


def interrupted(cause: ProviderError, *, provider: str, partial_output: str) -> StreamInterrupted:
    """The error for a stream that broke after output began; raise it ``from cause``.

    A StreamInterrupted cause (a cut) is kept, with the partial output added."""
    if isinstance(cause, StreamInterrupted):
        cause.partial_output = cause.partial_output or partial_output
        return cause
    return StreamInterrupted(
        f"stream from {provider} broke after output began: {type(cause).__name__}: "
        f"{cause.message}",
        status=200, provider=provider, body=cause.body, code=cause.code,
        retry_after=cause.retry_after, usage=cause.usage, partial_output=partial_output,
    )
