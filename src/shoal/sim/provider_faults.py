"""Faults only some providers have: their business error codes (``code:<code>``) and the
finish reasons that end an answer short (``finish:<reason>``), per provider style.

* ``code:<code>`` answers the error the style's provider answers with that code
  (PROVIDERS.md §1, §3, §8): Zhipu's ``{"error":{"code","message"}}`` with its HTTP
  status (the plan caps 1308/1310 name their reset time, Beijing time, in the message
  only); MiniMax's ``base_resp`` inside an **HTTP 200** (streamed requests too, as
  ``application/json``); OpenAI's 429 ``slow_down``.
* ``finish:<reason>`` sends half the answer's text, then that finish reason: DeepSeek's
  ``insufficient_system_resource``, Zhipu's ``sensitive`` and ``network_error``, OpenAI's
  ``content_filter``, Anthropic's ``model_context_window_exceeded`` and ``pause_turn``
  (after a ``web_search`` server tool's call and result, as when server tools paused a
  long turn).

A code or reason the route's style does not have is refused with a 400 that lists
what it has (:func:`check`).
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from shoal.sim.content import Answer, BadInput, truncate_calls

__all__ = ["FINISH_REASONS", "check", "coded_error", "cut_short"]

_DUMPS = json.JSONEncoder(separators=(",", ":")).encode
_BEIJING = datetime.timezone(datetime.timedelta(hours=8))

# Zhipu (docs.z.ai/api-reference/api-code): code -> (HTTP status, message). Plan caps
# carry "{reset}": the time they end, written as Beijing time without an offset.
_ZHIPU: dict[str, tuple[int, str]] = {
    "1113": (429, "Your account is in arrears, please recharge and try again"),
    "1211": (400, "Model does not exist, please check the model code"),
    "1301": (400, "System detected potentially unsafe or sensitive content in input or "
                  "generation. Please avoid using prompts that may generate sensitive "
                  "content. Thank you for your cooperation."),
    "1302": (429, "High concurrency usage of this API, please reduce concurrency or contact "
                  "customer service to increase limits"),
    "1303": (429, "High frequency usage of this API, please reduce frequency or contact "
                  "customer service to increase limits"),
    "1304": (429, "The daily call limit for this API has been reached; buy a resource "
                  "package or contact customer service"),
    "1305": (429, "The service may be temporarily overloaded, please try again later"),
    "1308": (429, "Usage limit reached for 5 hour. Your limit will reset at {reset}"),
    "1310": (429, "Weekly/Monthly Limit Exhausted. Your limit will reset at {reset}"),
    "1312": (429, "The model is currently overloaded, please try again later"),
}
# When a plan cap ends, seconds after the simulator's wall clock.
_ZHIPU_RESET_S = {"1308": 3600.0, "1310": 3 * 86400.0}

# MiniMax base_resp status codes (platform.minimax.io/docs/api-reference/errorcode).
_MINIMAX: dict[str, str] = {
    "1000": "unknown error", "1001": "request timeout", "1002": "rate limit",
    "1004": "not authorized", "1008": "insufficient balance", "1013": "internal error",
    "1024": "internal error", "1026": "input new_sensitive", "1027": "output new_sensitive",
    "1033": "system error", "1039": "token limit", "1041": "conn limit",
    "2013": "invalid params", "2045": "rate growth limit", "2049": "invalid api key",
    "2056": "usage limit exceeded",
}

# OpenAI (platform.openai.com/docs/guides/error-codes): code -> (status, type, message).
_OPENAI: dict[str, tuple[int, str, str]] = {
    "slow_down": (429, "rate_limit_error",
                  "A sudden increase in your request rate is impacting service reliability. "
                  "Please reduce your request rate to its original level, maintain a "
                  "consistent rate for at least 15 minutes, and then gradually increase it."),
}

_CODES: dict[str, frozenset[str]] = {
    "zhipu": frozenset(_ZHIPU), "minimax": frozenset(_MINIMAX),
    "openai": frozenset(_OPENAI), "permissive": frozenset(_OPENAI),
}

# Finish reasons that end an answer short, per style on the OpenAI endpoint; every style
# on the Anthropic endpoint has Anthropic's.
FINISH_REASONS: dict[str, frozenset[str]] = {
    "openai": frozenset({"content_filter"}),
    "permissive": frozenset({"content_filter"}),
    "deepseek": frozenset({"insufficient_system_resource", "content_filter"}),
    "zhipu": frozenset({"sensitive", "network_error"}),
}
ANTHROPIC_FINISH = frozenset({"model_context_window_exceeded", "pause_turn"})


def check(fault: str, style: str, protocol: str) -> None:
    """Refuse a ``code:``/``finish:`` fault the route's style does not have (BadInput)."""
    kind, _, value = fault.partition(":")
    if kind == "code":
        known = _CODES.get(style, frozenset()) if protocol == "openai" else frozenset()
        what = "business error code"
    elif kind == "finish":
        known = ANTHROPIC_FINISH if protocol == "anthropic" else FINISH_REASONS.get(
            style, frozenset())
        what = "finish reason"
    else:
        return
    if value not in known:
        has = ", ".join(sorted(known)) or "none"
        raise BadInput(
            f"the simulator's {style!r} style on the {protocol} endpoint has no {what} "
            f"{value!r} (fault {fault!r}); it has: {has}")


def coded_error(style: str, code: str, *, wall: float) -> tuple[int, bytes]:
    """(status, body) of business code ``code`` in ``style`` (already :func:`check`-ed);
    ``wall`` is the simulator's wall clock (epoch seconds)."""
    if style == "minimax":
        base = {"base_resp": {"status_code": int(code), "status_msg": _MINIMAX[code]}}
        return 200, _DUMPS(base).encode()
    if style == "zhipu":
        status, message = _ZHIPU[code]
        if "{reset}" in message:
            reset = datetime.datetime.fromtimestamp(wall + _ZHIPU_RESET_S[code], _BEIJING)
            message = message.format(reset=reset.strftime("%Y-%m-%d %H:%M:%S"))
        return status, _DUMPS({"error": {"code": code, "message": message}}).encode()
    status, etype, message = _OPENAI[code]
    err: dict[str, Any] = {"message": message, "type": etype, "param": None, "code": code}
    return status, _DUMPS({"error": err}).encode()


def cut_short(answer: Answer, reason: str) -> Answer:
    """``answer`` ended by ``reason`` (what the wire says): the first half of its text,
    the reasoning kept. Tool calls are dropped, except that a full context window cuts
    them halfway like max_tokens does (arguments incomplete)."""
    keep = max(1, len(answer.pieces) // 2) if answer.pieces else 0
    answer.pieces = answer.pieces[:keep]
    pieces = sum(len(call.pieces) for call in answer.tools)
    if reason == "model_context_window_exceeded" and pieces:
        answer.tools = truncate_calls(answer.tools, max(1, pieces // 2))
        pieces = sum(len(call.pieces) for call in answer.tools)
    else:
        answer.tools, pieces = [], 0
    answer.finish = "stop"
    answer.provider_finish = reason
    answer.completion_tokens = len(answer.pieces) + pieces + len(answer.reasoning)
    return answer
