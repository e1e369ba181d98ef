"""The gateway's cheaper request paths give what the general ones give: the access
line written straight to its stream, and the request reader's skipped fields."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from shoal.gateway import access_log
from shoal.gateway.errors import BadInput
from shoal.gateway.translate_openai import parse_chat

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    log = access_log.log
    saved = (log.handlers[:], log.level, log.propagate)
    access_log.configure_access_log(True)
    try:
        yield out
    finally:
        log.handlers[:], log.level, log.propagate = saved


def test_an_access_line_goes_straight_to_the_configured_stream(stderr: io.StringIO) -> None:
    access_log.emit('{"a":1}')
    access_log.emit('{"b":2}')
    assert stderr.getvalue() == '{"a":1}\n{"b":2}\n'  # as logging's bare handler writes


def test_anything_else_listening_gets_the_record_through_logging(
        stderr: io.StringIO) -> None:
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    extra = Keep()
    access_log.log.addHandler(extra)
    access_log.emit('{"c":3}')
    assert seen == ['{"c":3}'] and stderr.getvalue() == '{"c":3}\n'
    access_log.log.removeHandler(extra)
    access_log.log.addFilter(lambda record: False)  # a filter: logging decides
    try:
        access_log.emit('{"d":4}')
    finally:
        access_log.log.filters.clear()
    assert stderr.getvalue() == '{"c":3}\n'


def test_a_stream_that_fails_is_reported_as_logging_reports_it(
        stderr: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    handler = access_log.log.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    reported: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", reported.append)

    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError("broken pipe")

    handler.setStream(Broken())
    access_log.emit('{"e":5}')  # never raises into the request
    assert [r.getMessage() for r in reported] == ['{"e":5}']


@pytest.mark.parametrize("fields", [
    {}, {"n": None, "tools": None, "temperature": None, "stop": None, "stream": None,
         "stream_options": None, "response_format": None, "logprobs": None, "user": None},
    {"n": 1, "temperature": 0, "top_p": 1, "seed": 3, "stop": "x", "user": "u",
     "metadata": {"k": "v"}, "max_completion_tokens": 7, "max_tokens": 9,
     "stream": True, "stream_options": {"include_usage": True}, "logprobs": True,
     "top_logprobs": 2, "reasoning_effort": "low", "parallel_tool_calls": False,
     "tool_choice": "auto", "response_format": {"type": "json_object"},
     "frequency_penalty": 0.5, "tools": [{"type": "function", "function": {"name": "f"}}]},
])
def test_null_fields_read_as_absent_ones(fields: dict[str, object]) -> None:
    parsed = parse_chat({"model": "m", "messages": HI, **fields})
    plain = parse_chat({"model": "m", "messages": HI,
                        **{k: v for k, v in fields.items() if v is not None}})
    assert parsed == plain


@pytest.mark.parametrize(("field", "value", "param"), [
    ("n", 2, "n"), ("n", "1", "n"), ("max_tokens", "9", "max_tokens"),
    ("metadata", [], "metadata"), ("user", 1, "user"), ("tools", {}, "tools"),
    ("temperature", "hot", "temperature"), ("stop", 1, "stop"),
    ("stream", "yes", "stream"), ("top_logprobs", 2, "top_logprobs"),
])
def test_a_wrong_field_is_still_named(field: str, value: object, param: str) -> None:
    with pytest.raises(BadInput) as err:
        parse_chat({"model": "m", "messages": HI, field: value})
    assert err.value.param == param
