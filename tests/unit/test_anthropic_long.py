"""Which Anthropic calls asked for whole go out streamed: the official SDK's bound
(``_calculate_nonstreaming_timeout``: 3600 s × max_tokens ÷ 128k over 10 minutes, or
over the model's ``MODEL_NONSTREAMING_TOKENS``), and what a broken one was billed."""

from __future__ import annotations

import pytest

from shoal.providers.anthropic import AnthropicProvider
from shoal.providers.anthropic_answer import StreamState
from shoal.providers.anthropic_long import billed_so_far, streams_whole
from shoal.types import ChatRequest, Message


@pytest.mark.parametrize(("model", "max_tokens", "streams"), [
    ("claude-sonnet-4-6", 4_096, False),
    ("claude-sonnet-4-6", 21_333, False),  # 600 s by the estimate: not over it
    ("claude-sonnet-4-6", 21_334, True),
    ("claude-sonnet-4-6", 64_000, True),
    ("claude-opus-4-20250514", 8_192, False),  # its non-streaming limit
    ("claude-opus-4-20250514", 8_193, True),
    ("claude-opus-4-0", 8_193, True),
    ("claude-opus-4-1@20250805", 8_193, True),
    ("claude-opus-4-6", 8_193, False),  # no entry: the estimate alone
    ("claude-sonnet-4-6", None, False),
    ("claude-sonnet-4-6", "40000", False),  # not an integer (through extra): as sent
    ("claude-sonnet-4-6", True, False),
])
def test_streams_whole(model: str, max_tokens: object, streams: bool) -> None:
    assert streams_whole(model, max_tokens) is streams


def test_prepare_marks_only_long_bodies_as_streams() -> None:
    p = AnthropicProvider(base_url="http://127.0.0.1:9", api_key="k")

    def body(max_tokens: int | None, extra: dict[str, object] | None = None
             ) -> dict[str, object]:
        request = ChatRequest(model="m", messages=[Message.user("hi")],
                              max_tokens=max_tokens, extra=extra or {})
        payload = p.prepare(request, model="claude-sonnet-4-6").payload
        assert payload is not None
        return payload

    assert "stream" not in body(None)  # the default 4096
    assert "stream" not in body(21_333)
    assert body(21_334)["stream"] is True
    assert body(1_000, {"max_tokens": 30_000})["stream"] is True  # the max_tokens sent counts
    prepared = p.prepare(ChatRequest(model="m", messages=[Message.user("hi")],
                                     max_tokens=32_000), model="claude-sonnet-4-6")
    assert prepared.data is not None and b'"stream":true' in prepared.data


def test_billed_so_far() -> None:
    st = StreamState(None)
    assert billed_so_far(st, 30_000) is None  # no usage came: the Router estimates
    st.feed("message_start", {"message": {"id": "m", "model": "c", "usage": {
        "input_tokens": 40, "cache_read_input_tokens": 60, "output_tokens": 1}}})
    before = billed_so_far(st, 30_000)
    assert before is not None and (before.input_tokens, before.output_tokens) == (100, 1)
    st.feed("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    st.feed("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "a"}})
    began = billed_so_far(st, 30_000)  # output began: bounded by max_tokens
    assert began is not None and (began.input_tokens, began.output_tokens) == (100, 30_000)
    assert began.cached_input_tokens == 60 and st.usage.output_tokens == 1
    st.feed("message_delta", {"delta": {"stop_reason": "end_turn"},
                              "usage": {"output_tokens": 7}})
    final = billed_so_far(st, 30_000)  # the final count
    assert final is not None and (final.input_tokens, final.output_tokens) == (100, 7)
