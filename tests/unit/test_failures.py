"""The mapping of provider answers into the error tree (pure: bodies in, errors out)."""

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
    StreamInterrupted,
    redact,
)
from shoal.providers.failures import (
    error_from_response,
    error_from_stream_payload,
    parse_retry_after,
)

NOW = 1_700_000_000.0


def err(status: int, body: object, headers: dict[str, str] | None = None) -> ProviderError:
    text = body if isinstance(body, str) else json.dumps(body)
    return error_from_response(status, text, headers or {}, provider="p", now_wall=NOW)


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after-ms": "1500"}, NOW) == 1.5
    assert parse_retry_after({"retry-after": "2"}, NOW) == 2.0
    assert parse_retry_after({"retry-after": "0.25"}, NOW) == 0.25
    # HTTP-date 30 s in the future
    assert parse_retry_after({"retry-after": "Tue, 14 Nov 2023 22:13:50 GMT"}, NOW) == 30.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}, NOW) == 0.25
    assert parse_retry_after({"retry-after": "garbage"}, NOW) is None
    assert parse_retry_after({"retry-after": "-3"}, NOW) is None
    assert parse_retry_after({}, NOW) is None


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (429, {"error": {"message": "slow down", "type": "requests",
                         "code": "rate_limit_exceeded"}}, RateLimited),
        (429, {"error": {"message": "You exceeded your current quota",
                         "type": "insufficient_quota", "code": "insufficient_quota"}},
         QuotaExhausted),
        (402, {"error": {"message": "Insufficient Balance"}}, QuotaExhausted),  # DeepSeek
        (429, {"error": {"message": "quota", "type": "exceeded_current_quota_error"}},
         QuotaExhausted),  # Moonshot
        (429, {"error": {"code": "1113", "message": "arrears"}}, QuotaExhausted),  # Zhipu
        (429, {"error": {"code": "1302", "message": "concurrency"}}, RateLimited),  # Zhipu
        (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
         RateLimited),
        (503, {"error": {"message": "overloaded"}}, ProviderUnavailable),
        (500, "<html>oops</html>", ProviderUnavailable),
        (401, {"error": {"message": "bad key", "type": "invalid_authentication_error"}},
         AuthError),
        (403, {"type": "error", "error": {"type": "permission_error", "message": "no"}},
         AuthError),
        (400, {"error": {"message": "This model's maximum context length is 128000 tokens",
                         "code": "context_length_exceeded"}}, ContextOverflow),
        (400, {"type": "error", "error": {"type": "invalid_request_error",
                                          "message": "prompt is too long: 250000 tokens"}},
         ContextOverflow),
        (400, [{"error": {"code": 400, "message": "bad field", "status": "INVALID_ARGUMENT"}}],
         BadRequest),  # Gemini's array envelope
        (422, {"object": "error", "message": "bad", "type": "BadRequestError", "code": 422},
         BadRequest),  # old flat vLLM
        (200, {"base_resp": {"status_code": 1008, "status_msg": "insufficient balance"}},
         QuotaExhausted),  # MiniMax inside a 200
    ],
)
def test_status_and_envelope_map_to_the_tree(status: int, body: object, cls: type) -> None:
    e = err(status, body)
    assert type(e) is cls
    assert e.status == status and e.provider == "p"


def test_rate_limit_carries_retry_after_and_body() -> None:
    e = err(429, {"error": {"message": "slow", "code": "rate_limit_exceeded"}},
            {"retry-after": "7"})
    assert isinstance(e, RateLimited) and e.retryable
    assert e.retry_after == 7.0
    assert "slow" in e.body
    assert e.code == "rate_limit_exceeded"


def test_never_retryable_classes() -> None:
    assert not err(401, {"error": {"message": "x"}}).retryable
    assert not err(429, {"error": {"type": "insufficient_quota", "message": "x"}}).retryable
    assert not err(400, {"error": {"message": "x"}}).retryable


def test_stream_error_payloads() -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert isinstance(error_from_stream_payload(overloaded, provider="a", raw="{}"), RateLimited)
    other = {"error": {"message": "boom", "type": "server_error"}}
    e = error_from_stream_payload(other, provider="a", raw="{}")
    assert isinstance(e, StreamInterrupted) and e.status == 200


def test_keys_are_scrubbed_from_errors() -> None:
    body = {"error": {"message": "Incorrect API key provided: sk-abcdefghijklmnop1234"}}
    e = err(401, body)
    assert "sk-abcdefghijklmnop1234" not in str(e)
    assert "sk-abcdefghijklmnop1234" not in e.body
    assert "sk-abcdefghijklmnop1234" not in repr(e)
    assert redact("Authorization: Bearer abcdefghijklmnop") == "Authorization: Bearer ***"
    assert redact("my key is hunter2hunter2", ["hunter2hunter2"]) == "my key is ***"


def test_errors_pickle_with_their_fields() -> None:
    import pickle

    e = err(429, {"error": {"message": "slow"}}, {"retry-after": "3"})
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is RateLimited and back.retry_after == 3.0 and back.status == 429
