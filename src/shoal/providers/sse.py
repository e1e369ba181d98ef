"""A tolerant Server-Sent Events reader (the grammar both official SDKs accept).

Lines may end in LF, CR or CRLF (even when a CRLF is split across two reads); ``:``
lines are comments; one space after the field colon is optional; several ``data``
lines join with ``\\n``; an event without a trailing blank line at EOF is still
delivered (llama.cpp's unterminated [DONE]). Lines are split here from raw body
chunks, so an event of any size parses (no client library line limit applies).

A body whose first non-blank byte is ``{`` or ``[`` is not a stream but a whole JSON
document (a proxy that ignored ``stream: true``, or an error envelope): it is
delivered once as ``(JSON_BODY, text)`` for the adapter to parse as a non-stream answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

__all__ = ["JSON_BODY", "iter_lines", "iter_sse"]

# The event name that marks a whole JSON body; no SSE wire event can carry a NUL.
JSON_BODY = "\x00json"

_BLANK = b" \t\r\n"


async def iter_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Split raw body chunks into lines (terminators removed), with no size limit."""
    pending: list[bytes] = []  # pieces of a line not yet terminated
    skip_lf = False  # the last chunk ended in CR: a leading LF now ends nothing new
    async for raw in chunks:
        if not raw:
            continue
        chunk = raw[1:] if skip_lf and raw[:1] == b"\n" else raw
        skip_lf = False
        if not chunk:
            continue
        if b"\n" not in chunk and b"\r" not in chunk:
            pending.append(chunk)
            continue
        data = b"".join((*pending, chunk)) if pending else chunk
        pending = []
        lines = data.splitlines()  # bytes split only on CR, LF and CRLF
        last = data[-1:]
        if last == b"\r":
            skip_lf = True
        elif last != b"\n":
            pending.append(lines.pop())
        for line in lines:
            yield line
    if pending:
        yield b"".join(pending)


async def _sniffed(chunks: AsyncIterable[bytes], head: list[bytes]
                   ) -> AsyncIterator[bytes]:
    for chunk in head:
        yield chunk
    async for chunk in chunks:
        yield chunk


async def iter_sse(chunks: AsyncIterable[bytes], *, whole_json: bool = False
                   ) -> AsyncIterator[tuple[str, str]]:
    """Yield ``(event_name, data)`` pairs; ``event_name`` is "" when the event had none.

    ``whole_json`` (the response said ``Content-Type: …json``) or a body that starts with
    ``{``/``[`` yields one ``(JSON_BODY, text)`` instead.
    """
    it = aiter(chunks)
    head: list[bytes] = []
    first = b""
    async for chunk in it:  # sniff: find the first byte that is not blank
        head.append(chunk)
        stripped = chunk.lstrip(_BLANK)
        if stripped:
            first = stripped[:1]
            break
    if whole_json or first in (b"{", b"["):
        rest = [chunk async for chunk in it]
        yield JSON_BODY, b"".join((*head, *rest)).decode("utf-8", "replace")
        return
    event = ""
    data: list[str] = []
    async for raw in iter_lines(_sniffed(it, head)):
        line = raw.decode("utf-8", "replace")
        if not line:
            if data:
                yield event, "\n".join(data)
            event = ""
            data = []
            continue
        if line[0] == ":":
            continue
        field, sep, value = line.partition(":")
        if not sep:
            continue
        if value[:1] == " ":
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
        elif field == "error":
            # Old llama.cpp sent errors under a non-standard field: surface them as data.
            event = "error"
            data.append(value)
    if data:
        yield event, "\n".join(data)
