"""The mapping of provider answers into the error tree (pure: bodies in, errors out)."""

from __future__ import annotations

import json

import pytest

from shoal.errors import (
    AuthError,
    BadRequest,
    ContextOverflow,
    MalformedResponse,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
    RetryDeclined,
    StreamInterrupted,
    redact,
)
from shoal.providers.failures import (
    error_from_finish,
    error_from_response,
    error_from_stream_payload,
    error_from_transport,
    interrupted,
    is_error_body,
    parse_retry_after,
    transport_errors,
)
from shoal.types import Usage

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
         Overloaded),
        (529, "", Overloaded),  # the status alone says it
        (429, {"error": {"message": "The engine is currently overloaded",
                         "type": "engine_overloaded_error"}}, Overloaded),  # Moonshot
        (429, {"error": {"code": "1305", "message": "model overloaded"}}, Overloaded),  # Zhipu
        (500, {"error": {"code": "1312", "message": "busy"}}, Overloaded),  # Zhipu
        (503, {"error": {"message": "overloaded"}}, ProviderUnavailable),  # text alone: 5xx
        (503, {"error": {"message": "Server overloaded", "type": "server_error"}},
         ProviderUnavailable),
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
        (200, {"base_resp": {"status_code": 1002, "status_msg": "rate limit"}}, RateLimited),
        (200, {"base_resp": {"status_code": 1000, "status_msg": "unknown"}},
         ProviderUnavailable),
        # MiniMax's own codes in a 200: the caller's mistakes are not retried
        (200, {"base_resp": {"status_code": 2013, "status_msg": "invalid params, x"}},
         BadRequest),
        (200, {"base_resp": {"status_code": 1026, "status_msg": "input new_sensitive"}},
         BadRequest),
        (200, {"base_resp": {"status_code": 1027, "status_msg": "output new_sensitive"}},
         BadRequest),
        (200, {"base_resp": {"status_code": 1001, "status_msg": "request timeout"}},
         ProviderTimeout),
        (200, {"base_resp": {"status_code": 2049, "status_msg": "invalid api key"}},
         AuthError),
        (200, {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}},
         BadRequest),  # an error envelope in a 200 is what its type says
        (200, {"type": "error", "error": {"type": "overloaded_error", "message": "x"}},
         Overloaded),
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


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        # MiniMax's /v1/chat/completions envelope: its code ends the message
        (429, {"type": "error", "error": {"type": "rate_limit_error", "http_code": "429",
                                          "message": "usage limit exceeded (2056)"}},
         QuotaExhausted),
        (429, {"type": "error", "error": {"type": "rate_limit_error", "http_code": "429",
                                          "message": "rate limit exceeded (1002)"}},
         RateLimited),
        (200, {"base_resp": {"status_code": 1039, "status_msg": "token limit"}}, RateLimited),
        (200, {"base_resp": {"status_code": 1013, "status_msg": "internal error"}},
         ProviderUnavailable),
        # Zhipu: the day's limit is quota; content safety and unknown model are final
        (429, {"error": {"code": "1304", "message": "daily limit"}}, QuotaExhausted),
        (400, {"error": {"code": "1301", "message": "unsafe content"}}, BadRequest),
        (200, {"error": {"code": "1301", "message": "unsafe content"}}, BadRequest),
        (200, {"error": {"code": "1211", "message": "Model does not exist"}}, BadRequest),
        # OpenAI's slow_down, once sent as a 503
        (503, {"error": {"message": "slow down", "code": "slow_down"}}, RateLimited),
    ],
)
def test_provider_codes_map_to_the_tree(status: int, body: object, cls: type) -> None:
    assert type(err(status, body)) is cls


def test_a_zhipu_plan_cap_waits_for_its_reset_in_beijing_time() -> None:
    body = {"error": {"code": "1308", "message": "Usage limit reached for 5 hour. Your limit "
                                                 "will reset at 2023-11-15 07:13:20"}}
    e = err(429, body)  # NOW is 2023-11-14 22:13:20 UTC = 2023-11-15 06:13:20 in Beijing
    assert isinstance(e, QuotaExhausted) and e.retry_after == 3600.0
    past = {"error": {"code": "1310", "message": "will reset at 2023-11-15 05:00:00"}}
    assert err(429, past).retry_after == 0.0
    odd = {"error": {"code": "1310", "message": "will reset at 2023-13-45 99:00:00"}}
    assert err(429, odd).retry_after is None
    assert err(429, body, {"retry-after": "5"}).retry_after == 5.0  # a header wins


def test_x_should_retry_false_declines_a_retry_shoal_would_make() -> None:
    no = {"x-should-retry": "false"}
    for status, cls in ((503, ProviderUnavailable), (429, RateLimited), (529, Overloaded)):
        e = err(status, {"error": {"message": "busy"}}, {**no, "retry-after": "2"})
        assert type(e) is RetryDeclined and not e.retryable
        assert type(e.original) is cls and e.__cause__ is e.original
        assert (e.status, e.retry_after) == (status, 2.0)
    assert type(err(400, {"error": {"message": "x"}}, no)) is BadRequest
    assert type(err(429, {"error": {"type": "insufficient_quota"}}, no)) is QuotaExhausted
    assert type(err(503, {"error": {"message": "x"}}, {"X-Should-Retry": "False"})) is \
        RetryDeclined
    # "true" changes nothing: what shoal retries it retries, a request error stays final
    assert type(err(503, {"error": {"message": "x"}}, {"x-should-retry": "true"})) is \
        ProviderUnavailable
    assert type(err(400, {"error": {"message": "x"}}, {"x-should-retry": "true"})) is BadRequest


def test_a_retry_declined_survives_pickling() -> None:
    import pickle

    e = err(503, {"error": {"message": "busy"}}, {"x-should-retry": "false"})
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is RetryDeclined and type(back.original) is ProviderUnavailable
    assert back.status == 503


def test_finish_reasons_that_end_no_answer() -> None:
    usage = Usage(10, 4)
    for raw in ("insufficient_system_resource", "network_error"):
        e = error_from_finish(raw, provider="p", usage=usage)
        assert type(e) is ProviderUnavailable and e.retryable
        assert (e.code, e.status, e.usage) == (raw, 200, usage)
    for label in (None, "stop", "length", "sensitive", "content_filter", "pause_turn"):
        assert error_from_finish(label, provider="p", usage=usage) is None


def test_never_retryable_classes() -> None:
    assert not err(401, {"error": {"message": "x"}}).retryable
    assert not err(429, {"error": {"type": "insufficient_quota", "message": "x"}}).retryable
    assert not err(400, {"error": {"message": "x"}}).retryable


def test_overloaded_is_a_rate_limit_for_old_handlers() -> None:
    e = err(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Over"}})
    assert isinstance(e, RateLimited) and e.retryable
    with pytest.raises(RateLimited):
        raise e
    assert type(err(429, {"error": {"code": "rate_limit_exceeded"}})) is RateLimited


@pytest.mark.parametrize(
    ("payload", "cls"),
    [
        ({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
         Overloaded),
        ({"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}},
         RateLimited),
        ({"type": "error", "error": {"type": "api_error", "message": "Internal"}},
         ProviderUnavailable),
        ({"error": {"message": "boom", "type": "server_error"}}, ProviderUnavailable),
        ({"error": {"message": "x", "type": "insufficient_quota"}}, QuotaExhausted),
        # vLLM nested (>= 0.10.1) and flat: the numeric code is the status it stands for
        ({"error": {"message": "bad", "type": "BadRequestError", "code": 400}}, BadRequest),
        ({"object": "error", "message": "boom", "type": "InternalServerError", "code": 500},
         ProviderUnavailable),
        ({"error": {"message": "oops"}}, ProviderUnavailable),  # nothing to go on: server-side
    ],
)
def test_stream_error_payloads_map_as_the_error_they_name(payload: object, cls: type) -> None:
    e = error_from_stream_payload(payload, provider="a", raw=json.dumps(payload))
    assert type(e) is cls
    assert e.status == 200 and "inside the stream" in str(e)


def test_interrupted_keeps_the_cause_readable() -> None:
    cause = error_from_stream_payload(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        provider="a", raw="{}")
    cause.usage = Usage(10, 3)
    e = interrupted(cause, provider="a", partial_output="Hello wor")
    assert type(e) is StreamInterrupted and e.retryable
    assert "Overloaded" in str(e) and e.partial_output == "Hello wor"
    assert e.usage == Usage(10, 3) and e.code == "overloaded_error"
    cut = StreamInterrupted("cut", provider="a")
    assert interrupted(cut, provider="a", partial_output="xy") is cut
    assert cut.partial_output == "xy"


def test_error_envelopes_are_told_from_answers() -> None:
    assert is_error_body({"error": {"message": "x"}})
    assert is_error_body({"type": "error", "error": {"type": "api_error"}})
    assert is_error_body([{"error": {"code": 400}}])
    assert is_error_body({"base_resp": {"status_code": 1008}})
    assert not is_error_body({"base_resp": {"status_code": 0}, "choices": []})
    assert not is_error_body({"error": None, "choices": []})
    assert not is_error_body({"id": "chatcmpl-1", "choices": []})
    assert not is_error_body([1, 2])


def test_every_transport_exception_is_mapped() -> None:
    from shoal.providers import http1

    url = "http://x"
    cases: list[tuple[BaseException, bool, type]] = [
        (http1.BadHTTP("headers too large"), True, MalformedResponse),
        (http1.BadHTTP("garbage"), False, MalformedResponse),
        (http1.BadEncoding("bad gzip", "gzip"), False, MalformedResponse),
        (http1.BodyCut("cut"), True, StreamInterrupted),
        (http1.BodyCut("cut"), False, ProviderUnavailable),
        (http1.ServerDisconnected("gone"), True, StreamInterrupted),
        (http1.ServerDisconnected("gone"), False, ProviderUnavailable),
        (ConnectionResetError(), True, StreamInterrupted),
        (http1.ReadTimeout("silent"), True, ProviderTimeout),
        (http1.ConnectTimeout("no connection"), False, ProviderTimeout),
        (http1.PoolTimeout("busy"), False, ProviderTimeout),
        (TimeoutError(), False, ProviderTimeout),
        (http1.InvalidURL("nope"), False, BadRequest),
        (http1.InvalidHeader("line break"), False, BadRequest),
        (http1.ConnectFailed("refused", ConnectionRefusedError()), False, ProviderUnavailable),
        (OSError("net down"), False, ProviderUnavailable),
    ]
    errors = transport_errors()
    for exc, in_stream, cls in cases:
        assert isinstance(exc, errors), exc  # none escapes an adapter
        e = error_from_transport(exc, provider="p", url=url, in_stream=in_stream)
        assert type(e) is cls, (exc, in_stream, e)
    timeout = error_from_transport(http1.ConnectTimeout("x"), provider="p", url=url)
    assert isinstance(timeout, ProviderTimeout) and timeout.code == "connect_timeout"
    read = error_from_transport(http1.ReadTimeout("x"), provider="p", url=url)
    assert isinstance(read, ProviderTimeout) and read.code == "read_timeout"


def test_provider_error_usage_and_partial_output_pickle() -> None:
    import pickle

    e = StreamInterrupted("cut", provider="p", status=200, usage=Usage(5, 2),
                          partial_output="abc")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is StreamInterrupted
    assert back.usage == Usage(5, 2) and back.partial_output == "abc" and back.status == 200
    plain = pickle.loads(pickle.dumps(Overloaded("busy", status=529)))
    assert type(plain) is Overloaded and plain.usage is None
    assert ProviderError("x").usage is None and StreamInterrupted("x").partial_output == ""


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


def test_gemini_details_name_a_bad_key_and_the_wait() -> None:
    """Google answers a bad key with 400 INVALID_ARGUMENT whose ErrorInfo reason is
    API_KEY_INVALID (an AuthError, so the breaker opens and the hint names the key), and
    puts a 429's wait in RetryInfo.retryDelay instead of a Retry-After header."""
    bad_key = [{"error": {"code": 400, "message": "API key not valid. Please pass a valid "
                          "API key.", "status": "INVALID_ARGUMENT", "details": [{
                              "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                              "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}]
    assert type(err(400, bad_key)) is AuthError
    limited = [{"error": {"code": 429, "message": "Resource has been exhausted",
                          "status": "RESOURCE_EXHAUSTED", "details": [{
                              "@type": "type.googleapis.com/google.rpc.RetryInfo",
                              "retryDelay": "17s"}]}}]
    e = err(429, limited)
    assert isinstance(e, RateLimited) and e.retry_after == 17.0
    assert err(429, limited, {"retry-after": "3"}).retry_after == 3.0  # a header wins
    other = [{"error": {"code": 400, "message": "bad field", "status": "INVALID_ARGUMENT"}}]
    assert type(err(400, other)) is BadRequest


def test_a_413_is_a_request_too_large_not_a_context_overflow() -> None:
    """Anthropic's 413 ``request_too_large`` (PROVIDERS.md §2) says "exceeds the maximum
    allowed number of bytes": about bytes, which a larger context window would not fix
    (an agent falling back on ContextOverflow would resend the same body)."""
    body = {"type": "error", "error": {"type": "request_too_large",
                                       "message": "Request exceeds the maximum allowed "
                                                  "number of bytes."}}
    e = err(413, body)
    assert type(e) is BadRequest and e.status == 413
    assert "too large" in str(e) and not e.retryable


def test_an_html_error_page_reads_as_its_title_or_its_text() -> None:
    """A proxy's 503 page (nginx, a WAF) used to fill the message with markup and line
    breaks; now it is the page's title, or its text without tags, on one line."""
    nginx = ("<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n"
             "<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
             "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
    err = error_from_response(503, nginx, {}, provider="p", now_wall=0.0)
    assert isinstance(err, ProviderUnavailable)
    assert err.message == "p unavailable: 503 Service Temporarily Unavailable"
    assert err.body.startswith("<html>")  # the page itself stays on the error
    untitled = "<html><body>\n  <h1>Bad   gateway</h1>\n<p>upstream died</p></body></html>"
    said = error_from_response(502, untitled, {}, provider="p", now_wall=0.0).message
    assert said == "p unavailable: Bad gateway upstream died"


def test_advice_after_a_sentence_has_one_full_stop() -> None:
    body = json.dumps({"error": {"message": "This model's maximum context length is 8192 "
                                            "tokens. Please reduce the length of the messages.",
                                 "code": "context_length_exceeded"}})
    said = error_from_response(400, body, {}, provider="p", now_wall=0.0).message
    assert "messages. Trim the conversation" in said and ".." not in said
