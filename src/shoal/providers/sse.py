"""A tolerant Server-Sent Events reader (the grammar both official SDKs accept).

Lines may end in LF, CR or CRLF (even when a CRLF is split across two reads); ``:``
lines are comments; one space after the field colon is optional; several ``data``
lines join with ``\\n``; an event without a trailing blank line at EOF is still
delivered (llama.cpp's unterminated [DONE]). Lines are split here from raw body
chunks, so an event of any size parses (no client library line limit applies).

A body whose first non-blank byte is ``{`` or ``[`` is not a stream but a whole JSON
document (a proxy that ignored ``stream: true``, or an error envelope): it is
delivered once as ``(JSON_BODY, text)`` for the adapter to parse as a non-stream answer.
An empty body, or a page that is neither (a proxy's ``text/html``), is no answer and
raises (:func:`shoal.providers.failures.not_an_answer`).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from shoal.errors import MalformedResponse
from shoal.providers.failures import not_an_answer

__all__ = ["JSON_BODY", "MAX_EVENT_BYTES", "LineSplitter", "iter_sse"]

# No client-library line limit applies, but memory is finite: one line (or a whole JSON
# body) past this is refused as malformed rather than read until the process dies.
MAX_EVENT_BYTES = 64 * 1024 * 1024


def _too_large(what: str, limit: int) -> MalformedResponse:
    return MalformedResponse(
        f"{what} over {limit:,} bytes: refused rather than held in memory",
        status=200)

# The event name that marks a whole JSON body; no SSE wire event can carry a NUL.
JSON_BODY = "\x00json"

_BLANK = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"  # one leading byte order mark is ignored (the SSE spec's parsing rules)
_OTHER_FIELDS = frozenset({"id", "retry"})
_PREVIEW = 500  # bytes of a body that is not an event stream kept in its error


class LineSplitter:
    """Splits raw body chunks into lines (terminators removed) of up to ``limit`` bytes
    (a longer one raises ``MalformedResponse``)."""

    __slots__ = ("limit", "pending", "size", "skip_lf")

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self.pending: list[bytes] = []  # pieces of a line not yet terminated
        self.size = 0  # bytes in pending
        self.limit = limit
        self.skip_lf = False  # the last chunk ended in CR: a leading LF ends nothing new

    def _hold(self, piece: bytes) -> None:
        self.pending.append(piece)
        self.size += len(piece)
        if self.size > self.limit:
            raise _too_large("an SSE line", self.limit)

    def feed(self, raw: bytes) -> list[bytes]:
        if not raw:
            return []
        chunk = raw[1:] if self.skip_lf and raw[:1] == b"\n" else raw
        self.skip_lf = False
        if not chunk:
            return []
        if b"\n" not in chunk and b"\r" not in chunk:
            self._hold(chunk)
            return []
        pending = self.pending
        data = b"".join((*pending, chunk)) if pending else chunk
        self.pending = []
        self.size = 0
        lines = data.splitlines()  # bytes split only on CR, LF and CRLF
        last = data[-1:]
        if last == b"\r":
            self.skip_lf = True
        elif last != b"\n":
            self._hold(lines.pop())
        if lines and max(map(len, lines)) > self.limit:
            raise _too_large("an SSE line", self.limit)
        return lines

    def close(self) -> list[bytes]:
        """The last line, when the body did not end in a line break."""
        rest, self.pending = self.pending, []
        self.size = 0
        return [b"".join(rest)] if rest else []


class _Events:
    """SSE lines folded into ``(event, data)`` pairs."""

    __slots__ = ("data", "event", "fields")

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []
        self.fields = 0  # lines that were SSE: comments and known fields

    def feed(self, lines: list[bytes]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for raw in lines:
            if not raw:
                if self.data:
                    out.append((self.event, "\n".join(self.data)))
                self.event = ""
                self.data = []
                continue
            line = raw.decode("utf-8", "replace")
            if line[0] == ":":
                self.fields += 1
                continue
            field, sep, value = line.partition(":")
            if not sep:
                continue
            if value[:1] == " ":
                value = value[1:]
            if field == "data":
                self.data.append(value)
            elif field == "event":
                self.event = value
            elif field == "error":
                # Old llama.cpp sent errors under a non-standard field: surface them as data.
                self.event = "error"
                self.data.append(value)
            elif field not in _OTHER_FIELDS:
                continue
            self.fields += 1
        return out


async def iter_sse(chunks: AsyncIterable[bytes], *, whole_json: bool = False,
                   limit: int = MAX_EVENT_BYTES, provider: str = "",
                   content_type: str = "", status: int = 200,
                   ) -> AsyncIterator[tuple[str, str]]:
    """Yield ``(event_name, data)`` pairs; ``event_name`` is "" when the event had none.

    ``whole_json`` (the response said ``Content-Type: …json``) or a body that starts with
    ``{``/``[`` yields one ``(JSON_BODY, text)`` instead. A line or JSON body over
    ``limit`` bytes raises ``MalformedResponse``. A body with content and not one SSE
    line in it raises too, its first 500 bytes kept as the error's ``body``: a page of
    a type that is neither an event stream nor JSON (``content_type``: a proxy's
    ``text/plain`` or HTML page answered with 200) is no answer, a ``ProviderUnavailable``
    (:func:`~shoal.providers.failures.not_an_answer`: nothing billed); one that claims
    to be a stream is a ``MalformedResponse``. An empty body is no answer either. One
    leading byte order mark is ignored. ``status``: the answer's, kept on those errors.
    """
    who = provider or "the provider"
    it = aiter(chunks)
    head: list[bytes] = []
    first = b""
    async for chunk in it:  # sniff: find the first byte that is not blank
        piece = chunk[len(_BOM):] if not head and chunk.startswith(_BOM) else chunk
        head.append(piece)
        stripped = piece.lstrip(_BLANK)
        if stripped:
            first = stripped[:1]
            break
    if whole_json or first in (b"{", b"["):
        size = sum(map(len, head))
        async for chunk in it:
            head.append(chunk)
            size += len(chunk)
            if size > limit:
                raise _too_large("a JSON body", limit)
        text = b"".join(head).decode("utf-8", "replace")
        empty = not_an_answer(provider, status, content_type, text) if not first else None
        if empty is not None:
            raise empty
        yield JSON_BODY, text
        return
    lines = LineSplitter(limit)
    events = _Events()
    preview = b"".join(head)[:_PREVIEW]
    for chunk in head:
        for item in events.feed(lines.feed(chunk)):
            yield item
    async for chunk in it:
        if not events.fields and len(preview) < _PREVIEW:
            preview = (preview + chunk)[:_PREVIEW]
        for item in events.feed(lines.feed(chunk)):
            yield item
    for item in events.feed([*lines.close(), b""]):  # an unterminated last event counts
        yield item
    if not events.fields:
        text = preview.decode("utf-8", "replace").strip() if first else ""
        page = not_an_answer(provider, status, content_type, text, stream=True)
        if page is not None:
            raise page
        raise MalformedResponse(
            f"{who} answered a stream request with a body that is not an event stream "
            f"({content_type or 'no Content-Type'}): {text[:200]!r}; a broken answer, "
            "retried", status=status, provider=provider, body=text)
