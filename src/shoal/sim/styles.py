"""Provider styles: which real provider the simulator imitates, and its error envelopes.

A style names a provider (PROVIDERS.md). Each *strict* style refuses what that provider
refuses, with its status and error envelope (the rules live in
:mod:`shoal.sim.style_rules` and :mod:`shoal.sim.anthropic_rules`), and shapes answers
the way it does (usage placement, stream deltas). ``permissive`` is the simulator's
historical behaviour: OpenAI shapes, no provider refusals; use it only where a test does
not claim provider behaviour.

Selecting a style:
  * per server: ``SimConfig(style="deepseek")``, ``shoal sim --style deepseek``;
  * per route: the URL prefix ``/style/<name>``, e.g. ``sim.url + "/style/zhipu/v1"``
    for an OpenAI client, ``sim.url + "/style/anthropic"`` for an Anthropic one
    (``SimServer.base_url(style, protocol=...)`` builds these). One server can thus
    play several providers at once.

On the Anthropic endpoint (``/v1/messages``) every style except ``permissive`` applies
Anthropic's rules (DeepSeek, Kimi, Zhipu and MiniMax all serve Anthropic-compatible
endpoints too); on the OpenAI endpoint the ``anthropic`` style answers 404.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from shoal.sim.config import STYLES
from shoal.sim.content import BadInput

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "OPENAI_SHAPED",
    "STRICT_STYLES",
    "STYLES",
    "Refusal",
    "check_route",
    "error_body",
    "own_envelope",
    "route_style",
    "style_of",
]

STRICT_STYLES: frozenset[str] = frozenset(STYLES) - {"permissive"}
# Styles whose OpenAI endpoint looks like OpenAI itself (x-ratelimit-* headers, the HTML
# 502 of a gateway, a usage chunk with stream_options.include_usage).
OPENAI_SHAPED: frozenset[str] = frozenset({"openai", "permissive"})

_DUMPS = json.JSONEncoder(separators=(",", ":")).encode


class Refusal(BadInput):
    """A request the imitated provider refuses: *status*, provider *code*, message."""

    def __init__(
        self, message: str, param: str | None = None, *, status: int = 400,
        code: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message, param, status=status, code=code)


# -- selection ----------------------------------------------------------------------------


def route_style(request: web.Request) -> str | None:
    """The style named by the URL prefix ``/style/<name>``, if any (unchecked)."""
    return request.match_info.get("style")


def style_of(request: web.Request, default: str) -> str:
    """The style for *request*: its URL prefix when it names a style, else *default*."""
    name = request.match_info.get("style")
    return name if name in STYLES else default


def check_route(request: web.Request, protocol: str, default: str) -> None:
    """Refuse a URL prefix naming no style, and the OpenAI endpoint in ``anthropic`` style."""
    name = route_style(request)
    if name is not None and name not in STYLES:
        raise Refusal(
            f"unknown simulator style {name!r} in the URL /style/{name}/...; "
            f"use one of {', '.join(STYLES)}",
            status=404,
        )
    style = name or default
    if protocol == "openai" and style == "anthropic":
        raise Refusal(
            "This simulator route imitates Anthropic, which serves POST /v1/messages: "
            "point an Anthropic client at it, or pick an OpenAI-compatible style.",
            status=404,
        )


# -- error envelopes ----------------------------------------------------------------------

_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 409: "ABORTED", 429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL", 501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}  # fmt: skip

_ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    529: "overloaded_error",
}  # fmt: skip

_MINIMAX_TYPES = {
    400: "bad_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 429: "rate_limit_error",
}  # fmt: skip


def own_envelope(style: str) -> bool:
    """Whether *style*'s errors on the OpenAI endpoint are not the ``{"error":{...}}`` shape."""
    return style in ("gemini", "minimax", "anthropic")


def error_body(
    style: str, kind: str, status: int, message: str, ctx: dict[str, Any]
) -> tuple[int, bytes]:
    """(status, body) for the styles with their own envelope (see :func:`own_envelope`).

    * ``gemini``: a JSON **array** ``[{"error":{"code","message","status","details"}}]``;
      a bad key is 400 ``API_KEY_INVALID`` (Google answers 400, not 401); a 429 carries
      ``RetryInfo`` in ``details`` and no Retry-After header.
    * ``minimax``: ``{"type":"error","error":{"type","message","http_code"},"request_id"}``
      with the business code in the message (``invalid params, ... (2013)``); an empty
      balance is **HTTP 200** with ``{"base_resp":{"status_code":1008,...}}``.
    * ``anthropic`` (on the OpenAI endpoint: only the 404 saying so): Anthropic's envelope.
    """
    request_id = str(ctx.get("request_id") or "")
    if style == "gemini":
        return _gemini(kind, status, message, ctx)
    if style == "minimax":
        if kind == "quota":
            base = {"base_resp": {"status_code": 1008, "status_msg": "insufficient balance"}}
            return 200, _DUMPS(base).encode()
        code = _minimax_code(kind, status)
        text = message if message.endswith(")") else f"{_minimax_text(kind, message)} ({code})"
        etype = _MINIMAX_TYPES.get(status, "api_error" if status >= 500 else "bad_request_error")
        err = {"type": etype, "message": text, "http_code": str(status)}
        return status, _DUMPS({"type": "error", "error": err, "request_id": request_id}).encode()
    etype = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    err = {"type": etype, "message": message}
    return status, _DUMPS({"type": "error", "error": err, "request_id": request_id}).encode()


def _gemini(kind: str, status: int, message: str, ctx: dict[str, Any]) -> tuple[int, bytes]:
    details: list[dict[str, Any]] = []
    if kind == "auth":
        status, message = 400, "API key not valid. Please pass a valid API key."
        details.append({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID", "domain": "googleapis.com",
        })  # fmt: skip
    elif kind == "quota":
        message = "You exceeded your current quota, please check your plan and billing details."
    elif kind == "context_overflow":
        message = (
            f"The input token count ({ctx.get('prompt')}) exceeds the maximum number of "
            f"tokens allowed ({ctx.get('window')})."
        )
    elif kind == "bad_request" and ctx.get("violations"):
        details.append({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"description": v} for v in ctx["violations"]],
        })  # fmt: skip
    elif status >= 500:
        message = (
            "The model is overloaded. Please try again later."
            if status == 503
            else (
                "An internal error has occurred. Please retry or report in "
                "https://developers.generativeai.google/guide/troubleshooting"
            )
        )
    retry_after = ctx.get("retry_after")
    if status == 429 and retry_after is not None:
        details.append({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": f"{max(1, round(float(retry_after)))}s",
        })  # fmt: skip
    err: dict[str, Any] = {
        "code": status, "message": message, "status": _GOOGLE_STATUS.get(status, "UNKNOWN"),
    }  # fmt: skip
    if details:
        err["details"] = details
    return status, _DUMPS([{"error": err}]).encode()


def _minimax_code(kind: str, status: int) -> int:
    if kind == "rate_limit" or status == 429:
        return 1002
    if kind == "auth" or status == 401:
        return 1004
    if kind in ("bad_request", "context_overflow") or 400 <= status < 500:
        return 2013
    return 1013 if status >= 500 else 1000


def _minimax_text(kind: str, message: str) -> str:
    if kind == "rate_limit":
        return "rate limit exceeded, please retry later"
    if kind == "auth":
        return "login fail: Please carry the API secret key in the 'Authorization' field"
    if kind == "context_overflow":
        return "invalid params, context window exceeds limit"
    if kind == "bad_request":
        return f"invalid params, {message}"
    return "unknown error" if kind != "server" else "internal error"
