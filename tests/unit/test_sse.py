"""The SSE reader: lines split from raw chunks however the body was cut into reads."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.errors import ProviderUnavailable
from shoal.providers.sse import JSON_BODY, LineSplitter, iter_sse


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def events(parts: list[bytes], *, whole_json: bool = False) -> list[tuple[str, str]]:
    async def run() -> list[tuple[str, str]]:
        return [e async for e in iter_sse(_chunks(parts), whole_json=whole_json)]
    return asyncio.run(run())


def cut(body: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({0, len(body), *(p % (len(body) + 1) for p in points)})
    return [body[a:b] for a, b in itertools.pairwise(marks)]


_LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE, max_size=12), st.lists(st.sampled_from([b"\n", b"\r", b"\r\n"]),
                                             min_size=12, max_size=12),
       st.lists(st.integers(min_value=0), max_size=8))
def test_any_split_gives_the_lines_of_the_whole(lines: list[bytes], ends: list[bytes],
                                                points: list[int]) -> None:
    body = b"".join(line + end for line, end in zip(lines, ends, strict=False))
    splitter = LineSplitter()
    got: list[bytes] = []
    for part in cut(body, points):
        got.extend(splitter.feed(part))
    got.extend(splitter.close())
    assert got == body.splitlines()


def test_grammar_is_tolerant_and_split_agnostic() -> None:
    body = (b": keep-alive\r\n\r\nevent: message_start\r\ndata:{\"a\":1}\r\n\r\n"
            b"data: line1\ndata: line2\n\nid: 7\nretry: 10\nbogus\n\n"
            b"error: {\"error\":{\"message\":\"x\"}}\n\ndata: [DONE]")
    want = [("message_start", '{"a":1}'), ("", "line1\nline2"),
            ("error", '{"error":{"message":"x"}}'), ("", "[DONE]")]
    assert events([body]) == want
    assert events([body[i:i + 1] for i in range(len(body))]) == want  # one byte per read


def test_a_json_body_is_delivered_whole() -> None:
    want = [(JSON_BODY, '\n\n  {"id": 1, "x": 2}')]
    assert events([b"\n\n  ", b'{"id": 1,', b' "x": 2}']) == want
    assert events([b"data: not json"], whole_json=True) == [(JSON_BODY, "data: not json")]
    # An empty body is no answer (a load balancer's empty 200), not a stream of no events.
    with pytest.raises(ProviderUnavailable, match="empty body"):
        events([])


async def _pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_a_line_or_json_body_past_the_limit_is_malformed_not_held_forever() -> None:
    from shoal.errors import MalformedResponse

    with pytest.raises(MalformedResponse, match="SSE line over 100 bytes"):
        async for _ in iter_sse(_pieces(b"data: ", b"x" * 60, b"x" * 60), limit=100):
            pass
    with pytest.raises(MalformedResponse, match="JSON body over 100 bytes"):
        async for _ in iter_sse(_pieces(b'{"a": "', b"x" * 120, b'"}'), limit=100):
            pass
    got = [item async for item in iter_sse(_pieces(b"data: ", b"x" * 60, b"\n\n"), limit=100)]
    assert got == [("", "x" * 60)]  # under the limit: parsed as before
