"""PROVIDERS.md's error and usage facts that the conformance audit found mapped right but
pinned by no test (OpenAI's 409/404 and ``credit_balance_exhausted``, Zhipu's 1261 and
1214, Qwen's ``limit_requests``, Moonshot's ``incorrect_api_key_error``, Anthropic's
``timeout_error``/``api_error``/``billing_error``, Gemini's native cached count): each
lands where the Router's retry policy needs it."""

from __future__ import annotations

import json

import pytest

from shoal.errors import (
    AuthError,
    BadRequest,
    ContextOverflow,
    ProviderError,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
)
from shoal.providers.failures import error_from_response, error_from_stream_payload
from shoal.providers.openai_answer import usage_of


@pytest.mark.parametrize(("status", "body", "cls", "retryable"), [
    # OpenAI (§1): the SDK retries 409; 404 and 422 are final; a spent balance is a quota
    (409, {"error": {"message": "conflict", "type": "invalid_request_error"}},
     ProviderUnavailable, True),
    (404, {"error": {"message": "The model `gpt-9` does not exist", "code":
                     "model_not_found"}}, BadRequest, False),
    (429, {"error": {"message": "credits gone", "type": "insufficient_quota",
                     "code": "credit_balance_exhausted"}}, QuotaExhausted, False),
    # Zhipu (§3): prompt too long and an invalid parameter are the caller's to fix
    (400, {"error": {"code": "1261", "message": "Prompt exceeds max length"}},
     ContextOverflow, False),
    (400, {"error": {"code": "1214", "message": "messages[0].role: invalid"}}, BadRequest,
     False),
    # Qwen / DashScope (§8): a rate limit, per second too
    (429, {"error": {"type": "limit_requests", "code": "limit_requests",
                     "message": "Requests rate limit exceeded, please try again later."}},
     RateLimited, True),
    # Moonshot (§3): its other 401 type
    (401, {"error": {"message": "Invalid Authentication", "type": "incorrect_api_key_error"}},
     AuthError, False),
    # Anthropic (§2): the types the SDK knows beyond the status pairs
    (504, {"type": "error", "error": {"type": "timeout_error", "message": "timeout"}},
     ProviderUnavailable, True),
    (500, {"type": "error", "error": {"type": "api_error", "message": "Internal"}},
     ProviderUnavailable, True),
    (402, {"type": "error", "error": {"type": "billing_error", "message": "billing"}},
     QuotaExhausted, False),
], ids=["openai-409", "openai-404", "openai-credit-balance", "zhipu-1261", "zhipu-1214",
        "qwen-limit-requests", "moonshot-incorrect-key", "anthropic-timeout",
        "anthropic-api-error", "anthropic-billing"])
def test_documented_codes_map_to_the_tree(status: int, body: object,
                                          cls: type[ProviderError], retryable: bool) -> None:
    e = error_from_response(status, json.dumps(body), {}, provider="p", now_wall=0.0)
    assert type(e) is cls, e
    assert e.retryable is retryable


def test_an_anthropic_error_event_after_a_200_is_the_error_it_names() -> None:
    """§2: the SDK raises a status-200 ``APIStatusError``; shoal keeps the meaning."""
    payload = {"type": "error", "error": {"type": "api_error", "message": "Internal"}}
    e = error_from_stream_payload(payload, provider="p", raw=json.dumps(payload))
    assert type(e) is ProviderUnavailable and e.status == 200 and e.retryable


def test_gemini_native_cached_count_is_a_cache_read() -> None:
    """§7: Gemini reports ``cachedContentTokenCount`` (REST) where OpenAI has
    ``prompt_tokens_details.cached_tokens``; both are a subset of the prompt."""
    usage = usage_of({"prompt_tokens": 2000, "completion_tokens": 10,
                      "cachedContentTokenCount": 1500})
    assert usage is not None
    assert (usage.input_tokens, usage.cached_input_tokens) == (2000, 1500)
