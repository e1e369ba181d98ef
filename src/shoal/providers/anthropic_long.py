"""Long Anthropic answers asked for whole: sent as a stream, folded into the whole answer.

A non-streamed Messages answer is silent until it is complete. Anthropic's docs ask for
streaming on long requests because networks drop idle connections, and its Python SDK
refuses a non-streaming request it estimates at over ten minutes, or over the model's
non-streaming token limit, telling the caller to stream (``messages.stream(...)
.get_final_message()``). shoal's channel ``read_timeout`` (300 s of silence by default)
would otherwise turn such an answer into a ``ProviderTimeout`` that the Router retries,
although Anthropic may have generated (and billed) it. So a ``complete`` over that bound
goes out with ``"stream": true``: pings and deltas keep the connection alive, and the
events are folded here into the answer the whole body would have given
(:class:`~shoal.providers.anthropic_answer.StreamState`). The adapter
(:mod:`shoal.providers.anthropic`) does the wire.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from shoal import fastjson
from shoal.errors import MalformedResponse, ProviderError, ProviderUnavailable
from shoal.providers.anthropic_answer import StreamState
from shoal.providers.failures import error_from_stream_payload
from shoal.types import Usage

__all__ = ["NONSTREAMING_TOKENS", "billed_so_far", "cut_error", "fold_events", "streams_whole"]

# The most max_tokens a model answers without streaming, per the official SDK
# (anthropics/anthropic-sdk-python, src/anthropic/_constants.py MODEL_NONSTREAMING_TOKENS,
# at 009b035): Claude Opus 4 and 4.1 under their Anthropic, Bedrock and Vertex ids.
NONSTREAMING_TOKENS: dict[str, int] = {
    "claude-opus-4-20250514": 8_192,
    "claude-opus-4-0": 8_192,
    "claude-4-opus-20250514": 8_192,
    "anthropic.claude-opus-4-20250514-v1:0": 8_192,
    "claude-opus-4@20250514": 8_192,
    "anthropic.claude-opus-4-1-20250805-v1:0": 8_192,
    "claude-opus-4-1@20250805": 8_192,
}

# The SDK's estimate (_base_client.py ``_calculate_nonstreaming_timeout``): an answer of
# max_tokens takes up to 3600 s × max_tokens ÷ 128,000; over 600 s it must stream.
_HOUR_TOKENS = 128_000
_LONGEST_WHOLE_S = 600


def streams_whole(model: str, max_tokens: object) -> bool:
    """Whether a non-stream call of ``max_tokens`` on ``model`` goes out streamed.

    The official SDK refuses such a request without ``stream`` (anthropic-sdk-python
    ``_base_client.py`` ``_calculate_nonstreaming_timeout``): when 3600 s × max_tokens ÷
    128,000 is over 10 minutes (max_tokens over 21,333), or when max_tokens is over the
    model's entry in ``MODEL_NONSTREAMING_TOKENS`` (:data:`NONSTREAMING_TOKENS`: 8,192 for
    Claude Opus 4 and 4.1). Any model over this adapter is judged, as the SDK judges any
    model; a ``max_tokens`` that is not an integer (set through ``extra``) never is."""
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        return False
    if max_tokens * 3600 > _LONGEST_WHOLE_S * _HOUR_TOKENS:
        return True
    bound = NONSTREAMING_TOKENS.get(model)
    return bound is not None and max_tokens > bound


def billed_so_far(st: StreamState, max_tokens: int) -> Usage | None:
    """What a long answer that broke had been billed, as far as its events tell: the final
    usage once ``message_delta`` came; before, ``message_start``'s prompt counts with the
    output bounded by ``max_tokens`` once output began (its output count is from before
    the first token, so the Router charges the bound, as for any broken answer); None
    when no usage came (the Router then charges its own estimate)."""
    if not st.usage_seen:
        return None
    if st.stop is not None or not st.began():
        return st.usage
    return dataclasses.replace(st.usage, output_tokens=max(st.usage.output_tokens, max_tokens))


def fold_events(events: list[tuple[str, str]], *, schema_tool: str | None, provider: str,
                max_tokens: int) -> StreamState:
    """The SSE ``(event, data)`` pairs of a whole stream folded into one answer, or the
    error the non-stream path gives a broken answer: an ``error`` event is the error it
    names (``overloaded_error`` → Overloaded, status 200, as a 200 error body is); an
    event that is not JSON or not of its shape, or a stream that ended before its
    ``stop_reason``, is a ``MalformedResponse``. Each carries what was billed
    (:func:`billed_so_far`)."""
    st = StreamState(schema_tool)
    for event, data in events:
        try:
            obj: Any = fastjson.loads(data)
        except ValueError:
            raise MalformedResponse(
                f"{provider} sent a stream event that is not JSON", status=200,
                provider=provider, body=data, usage=billed_so_far(st, max_tokens),
            ) from None
        kind = obj.get("type", event) if isinstance(obj, dict) else event
        if kind == "error":
            err = error_from_stream_payload(obj, provider=provider, raw=data)
            if err.usage is None:
                err.usage = billed_so_far(st, max_tokens)
            raise err
        try:
            st.feed(kind, obj)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise MalformedResponse(
                f"{provider} sent a {kind or 'stream'} event of the wrong shape ({e!r})",
                status=200, provider=provider, body=data, usage=billed_so_far(st, max_tokens),
            ) from None
        if st.stopped:
            break
    if not st.stopped and st.stop is None:
        # Without message_stop a stream is whole once message_delta said why it ended
        # (with the final usage); without either it was cut short, as a JSON body cut
        # short is not JSON: a broken, billed answer.
        raise MalformedResponse(
            f"{provider} answered 200 and its stream ended without a stop_reason or "
            "message_stop", status=200, provider=provider, usage=billed_so_far(st, max_tokens))
    return st


def cut_state(events: list[tuple[str, str]], schema_tool: str | None) -> StreamState:
    """The events of a stream cut on its way, folded as far as they go (for its usage)."""
    st = StreamState(schema_tool)
    for event, data in events:
        try:
            obj: Any = fastjson.loads(data)
            st.feed(obj.get("type", event) if isinstance(obj, dict) else event, obj)
        except (KeyError, TypeError, AttributeError, ValueError):
            continue
    return st


def cut_error(err: ProviderError, events: list[tuple[str, str]], *, provider: str,
              schema_tool: str | None, max_tokens: int) -> ProviderError:
    """``err``, a transport failure after the 200, as the non-stream path reports it
    (``HttpProvider._post_json``): a cut (ProviderUnavailable) is a ``MalformedResponse``,
    a broken answer the provider made and billed; a timeout stays itself. Either carries
    what was billed (:func:`billed_so_far`)."""
    if isinstance(err, ProviderUnavailable):
        err = MalformedResponse(
            f"{err.message}: a broken answer the provider made and billed, retried",
            status=err.status or 200, provider=provider)
    if err.usage is None:
        err.usage = billed_so_far(cut_state(events, schema_tool), max_tokens)
    return err
