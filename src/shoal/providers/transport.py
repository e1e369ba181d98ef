"""Transport failures (what shoal's HTTP client and the OS raise while sending or
reading) as shoal errors, each mapped once; :mod:`shoal.providers.failures` re-exports
both functions.

What the wire said before the failure is kept: ``status`` is the HTTP status already
received (0 when the failure came before any), so a stream cut after its 200 says 200.
A body whose ``Content-Encoding`` cannot be decoded (corrupt gzip) is named as such, not
as a cut: every byte may have arrived, and it is the bytes that are wrong.
"""

from __future__ import annotations

import asyncio

from shoal.errors import (
    BadRequest,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    StreamInterrupted,
)

__all__ = ["error_from_transport", "transport_errors"]

def transport_errors() -> tuple[type[BaseException], ...]:
    """Every exception the HTTP client may raise while sending or reading; each is mapped
    by :func:`error_from_transport`, so none escapes an adapter."""
    from shoal.providers.http1 import WireError

    return (WireError, TimeoutError, OSError)


def _detail(exc: BaseException) -> str:
    """``exc`` in one line of at most 200 characters."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def error_from_transport(exc: BaseException, *, provider: str, url: str,
                         in_stream: bool = False, status: int = 0) -> ProviderError:
    """A transport failure (:mod:`shoal.providers.http1` or OS exception) as a shoal
    error. ``status``: the HTTP status received before it (0: none), kept on the error;
    ``in_stream``: an event stream was being read (its 2xx came).

    ============================================  ==========================================
    client / OS exception                         shoal error
    ============================================  ==========================================
    ``ConnectTimeout``, ``PoolTimeout``           ProviderTimeout ``connect_timeout``
                                                  (nothing was sent)
    ``ReadTimeout``, any ``TimeoutError``         ProviderTimeout ``read_timeout``
    ``BadEncoding`` (corrupt gzip, an encoding    MalformedResponse ``content_encoding``
    shoal does not decode)                        (the body could not be decoded)
    ``BodyCut``, ``ServerDisconnected``, reset    StreamInterrupted in a stream, else
                                                  ProviderUnavailable (body cut; the
                                                  adapter makes a 2xx's cut body a
                                                  MalformedResponse: a billed answer)
    ``BadHTTP`` (not an HTTP/1.1 response)        MalformedResponse (not valid HTTP)
    ``InvalidURL``, ``InvalidHeader``             BadRequest ``invalid_url`` / ``invalid_header``
    ``ConnectFailed`` (refused, DNS, TLS)         ProviderUnavailable ``connect_error``
    any other ``OSError``                         ProviderUnavailable
    ============================================  ==========================================
    """
    err = _mapped(exc, provider=provider, url=url, in_stream=in_stream, status=status)
    err.status = status
    return err


def _mapped(exc: BaseException, *, provider: str, url: str, in_stream: bool,
            status: int) -> ProviderError:
    from shoal.providers import http1

    where = f"{provider} ({url})"
    answered = f"{where} answered HTTP {status}" if status else ""
    if isinstance(exc, http1.ConnectTimeout | http1.PoolTimeout):
        return ProviderTimeout(
            f"{exc} for {where}: nothing was sent; raise connect_timeout/pool_timeout or "
            "pool_size", provider=provider, code="connect_timeout",
        )
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        said = f"{answered}, then sent nothing" if answered else f"read timeout from {where}:" \
            " no data"
        return ProviderTimeout(f"{said} within read_timeout", provider=provider,
                               code="read_timeout")
    if isinstance(exc, http1.BadEncoding):
        return MalformedResponse(
            f"{answered or where + ' answered'} with a body that could not be decoded "
            f"(content encoding {exc.encoding}): its bytes are corrupt or not in the "
            "encoding its header names (a proxy that compresses or relabels answers?), so "
            f"nothing in it can be read ({exc})",
            provider=provider, code="content_encoding",
        )
    cut = http1.BodyCut | http1.ServerDisconnected | ConnectionResetError
    if in_stream and isinstance(exc, cut):
        how = f"it answered HTTP {status}, then " if status else ""
        return StreamInterrupted(
            f"the stream from {where} was cut: {how}the connection closed before the "
            f"stream's end marker ({_detail(exc)})", provider=provider,
        )
    if isinstance(exc, http1.BadHTTP):
        return MalformedResponse(
            f"{where} sent a response that is not valid HTTP ({_detail(exc)})",
            provider=provider,
        )
    if isinstance(exc, http1.InvalidURL):
        return BadRequest(
            f"invalid URL for {provider}: {url!r} ({exc}). Fix the channel's base_url",
            provider=provider, code="invalid_url",
        )
    if isinstance(exc, http1.InvalidHeader):
        return BadRequest(
            f"a request header for {provider} cannot be sent: {exc}. Fix the channel's "
            "headers", provider=provider, code="invalid_header",
        )
    if isinstance(exc, http1.ConnectFailed):
        return ProviderUnavailable(
            f"cannot connect to {where}: {exc.os_error or exc}", provider=provider,
            code="connect_error")
    if answered and isinstance(exc, cut):
        return ProviderUnavailable(
            f"{answered}, then the connection closed before the body's end "
            f"({_detail(exc)})", provider=provider)
    return ProviderUnavailable(
        f"connection to {where} failed: {type(exc).__name__}: {exc}", provider=provider
    )
