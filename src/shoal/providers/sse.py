"""A tolerant Server-Sent Events reader (the grammar both official SDKs accept).

Lines may end in LF or CRLF; ``:`` lines are comments; one space after the field
colon is optional; several ``data`` lines join with ``\\n``; an event without a
trailing blank line at EOF is still delivered (llama.cpp's unterminated [DONE]).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

__all__ = ["iter_sse"]


async def iter_sse(lines: AsyncIterable[bytes]) -> AsyncIterator[tuple[str, str]]:
    """Yield ``(event_name, data)`` pairs; ``event_name`` is "" when the event had none."""
    event = ""
    data: list[str] = []
    async for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
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
