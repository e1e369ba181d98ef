"""Transport failures (what aiohttp and asyncio raise while sending or reading) as shoal
errors, each mapped once; :mod:`shoal.providers.failures` re-exports both functions.

What the wire said before the failure is kept: ``status`` is the HTTP status already
received (0 when the failure came before any), so a stream cut after its 200 says 200.
A body whose ``Content-Encoding`` cannot be decoded (corrupt gzip) is named as such, not
as a cut: every byte may have arrived, and it is the bytes that are wrong.
"""

from __future__ import annotations

import asyncio
import re

from shoal.errors import (
    BadRequest,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    StreamInterrupted,
)

__all__ = ["error_from_transport", "transport_errors", "undecodable"]

_ENCODING = re.compile(r"content-encoding:\s*([^\s.'\"]+(?: \([^)]*\))?)", re.IGNORECASE)


def transport_errors() -> tuple[type[BaseException], ...]:
    """Every exception the HTTP client may raise while sending or reading; each is mapped
    by :func:`error_from_transport`, so none escapes an adapter."""
    import aiohttp
    from aiohttp.http_exceptions import HttpProcessingError

    return (aiohttp.ClientError, HttpProcessingError, TimeoutError, OSError)


def undecodable(exc: BaseException) -> str | None:
    """The content encoding (``gzip``, ``deflate``, ``brotli (br)``) a response body could
    not be decoded from, when that is what ``exc`` says (aiohttp raises a
    ``ClientPayloadError`` caused by a ``ContentEncodingError``, or a
    ``ClientResponseError`` saying so for an encoding it cannot decode at all); else None."""
    from aiohttp.http_exceptions import ContentEncodingError

    seen: BaseException | None = exc
    for _ in range(4):  # the exception and its causes, a few deep
        if seen is None:
            break
        text = str(seen)
        named = _ENCODING.search(text)
        if named is not None:
            return named[1]
        if isinstance(seen, ContentEncodingError):
            word = str(seen.message).strip()  # deflate's end check says only "deflate"
            return word if word.isalpha() else "unknown"
        seen = seen.__cause__ or seen.__context__
    return None


def _detail(exc: BaseException) -> str:
    """``exc`` in one line of at most 200 characters."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def error_from_transport(exc: BaseException, *, provider: str, url: str,
                         in_stream: bool = False, status: int = 0) -> ProviderError:
    """A transport failure (aiohttp or asyncio exception) as a shoal error. ``status``:
    the HTTP status received before it (0: none), kept on the error; ``in_stream``: an
    event stream was being read (its 200 came).

    ============================================  ==========================================
    aiohttp / asyncio exception                   shoal error
    ============================================  ==========================================
    ``ConnectionTimeoutError``                    ProviderTimeout ``connect_timeout``
    ``SocketTimeoutError``, ``TimeoutError``      ProviderTimeout ``read_timeout``
    ``ClientPayloadError`` from a                 MalformedResponse ``content_encoding``
    ``ContentEncodingError`` (corrupt gzip)       (the body could not be decoded)
    ``ClientPayloadError``,                       StreamInterrupted in a stream, else
    ``ServerDisconnectedError``, reset            ProviderUnavailable (body cut; the
                                                  adapter makes a 200's cut body a
                                                  MalformedResponse: a billed answer)
    ``HttpProcessingError`` (``LineTooLong``,     MalformedResponse (not valid HTTP)
    bad status line), ``ContentTypeError``,
    other ``ClientResponseError``
    ``InvalidURL``                                BadRequest ``invalid_url`` (fix base_url)
    ``ClientConnectorError``                      ProviderUnavailable ``connect_error``
    any other ``ClientError`` / ``OSError``       ProviderUnavailable
    ============================================  ==========================================
    """
    err = _mapped(exc, provider=provider, url=url, in_stream=in_stream, status=status)
    err.status = status
    return err


def _mapped(exc: BaseException, *, provider: str, url: str, in_stream: bool,
            status: int) -> ProviderError:
    import aiohttp
    from aiohttp.http_exceptions import HttpProcessingError

    where = f"{provider} ({url})"
    answered = f"{where} answered HTTP {status}" if status else ""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ProviderTimeout(
            f"timed out connecting to {where} or waiting for a pooled connection; "
            "raise connect_timeout/pool_timeout or pool_size", provider=provider,
            code="connect_timeout",
        )
    if isinstance(exc, aiohttp.SocketTimeoutError | asyncio.TimeoutError | TimeoutError):
        said = f"{answered}, then sent nothing" if answered else f"read timeout from {where}:" \
            " no data"
        return ProviderTimeout(f"{said} within read_timeout", provider=provider,
                               code="read_timeout")
    encoding = undecodable(exc)
    if encoding is not None:
        return MalformedResponse(
            f"{answered or where + ' answered'} with a body that could not be decoded "
            f"(content encoding {encoding}): its bytes are corrupt or not in the encoding "
            "its header names (a proxy that compresses or relabels answers?), so nothing in "
            f"it can be read ({_detail(exc)})", provider=provider, code="content_encoding",
        )
    cut = aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError | ConnectionResetError
    if in_stream and isinstance(exc, cut):
        how = f"it answered HTTP {status}, then " if status else ""
        return StreamInterrupted(
            f"the stream from {where} was cut: {how}the connection closed before the "
            f"stream's end marker ({_detail(exc)})", provider=provider,
        )
    if isinstance(exc, HttpProcessingError | aiohttp.ClientResponseError):
        return MalformedResponse(
            f"{where} sent a response that is not valid HTTP ({_detail(exc)})",
            provider=provider,
        )
    if isinstance(exc, aiohttp.InvalidURL):
        return BadRequest(
            f"invalid URL for {provider}: {url!r}. Fix the channel's base_url",
            provider=provider, code="invalid_url",
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ProviderUnavailable(
            f"cannot connect to {where}: {exc.os_error}", provider=provider, code="connect_error"
        )
    if answered and isinstance(exc, cut):
        return ProviderUnavailable(
            f"{answered}, then the connection closed before the body's end "
            f"({_detail(exc)})", provider=provider)
    return ProviderUnavailable(
        f"connection to {where} failed: {type(exc).__name__}: {exc}", provider=provider
    )
