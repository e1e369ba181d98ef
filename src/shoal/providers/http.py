"""One pool of keep-alive connections per channel (shoal's HTTP/1.1 client,
:mod:`shoal.providers.http1`), created inside the running loop, and what both wire
adapters share around it.

The client was chosen by measurement (docs/DECISIONS.md, "Hot-path HTTP client": a
quarter of aiohttp's instructions a call). The channel's timeouts: ``pool_timeout`` →
waiting for a free pooled connection, ``connect_timeout`` → TCP/TLS connect,
``read_timeout`` → silence while reading (no byte for that long, from the request on).
There is no separate write timeout; request bodies are small and land in the kernel's
send buffer, so a stuck peer shows up as a read timeout.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Self

from shoal import __version__, fastjson
from shoal.clock import Clock, RealClock
from shoal.errors import MalformedResponse, ProviderError, ProviderUnavailable
from shoal.providers.base import Prepared, Provider
from shoal.providers.caching import NO_TURN, enter_gate, gate_key
from shoal.providers.failures import (
    error_from_response,
    error_from_transport,
    interrupted,
    not_an_answer,
    transport_errors,
)
from shoal.types import (
    ChatRequest,
    ChatResponse,
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageEvent,
)

if TYPE_CHECKING:
    from shoal.config import ChannelConfig
    from shoal.providers.http1 import Http1Pool

__all__ = ["USER_AGENT", "HttpPool", "HttpProvider", "answer_events", "hand_off"]

USER_AGENT = f"shoal/{__version__}"

# Loop iterations a call that handed its slot to a queued call yields before it decodes
# and books its answer, so the queued call's request is on the wire first. Over aiohttp
# it took two (the headers, then a task aiohttp started to write the body; with one,
# makespan ÷ bound +0.003 at a known cap). shoal's client writes the whole request in
# the caller's step, so one would do: measured, 1.031–1.034 against 2's 1.034–1.038
# (`traffic_bench.py --only known`, 2026-11-28, within noise), so it stays at 2.
HANDOFF_YIELDS = 2


async def hand_off(received: Callable[[], object] | None) -> None:
    """The answer is read: call ``received()``; when it says a queued call took the slot,
    yield :data:`HANDOFF_YIELDS` times so that call's request is on the wire before this
    one decodes and books its answer (Anthropic's long answers; ``_post_json`` has it
    inline)."""
    if received is not None and received():
        for _ in range(HANDOFF_YIELDS):
            await asyncio.sleep(0)


class HttpPool:
    """The channel's :class:`~shoal.providers.http1.Http1Pool`, made on first use inside
    the running loop (a Router used from a second loop gets a second pool)."""

    def __init__(
        self,
        *,
        pool_size: int = 100,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        pool_timeout: float = 30.0,
    ) -> None:
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_timeout = pool_timeout
        self._session: Http1Pool | None = None
        self._closed = False

    def session(self) -> Http1Pool:
        session = self._session
        if session is not None and session.loop is asyncio.get_running_loop():
            return session
        if self._closed:
            raise RuntimeError("HttpPool is closed")
        from shoal.providers.http1 import Http1Pool

        self._session = Http1Pool(limit=self.pool_size, connect_timeout=self.connect_timeout,
                                  read_timeout=self.read_timeout,
                                  pool_timeout=self.pool_timeout)
        return self._session

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.aclose()


class HttpProvider(Provider):
    """What both wire adapters share: endpoint and headers, the pooled session, the one
    error mapping, and the transport (a JSON POST, or an SSE stream). Subclasses hold only
    their wire format: ``_endpoint``, ``_auth_headers``, ``payload`` and parsing."""

    default_provider = ""
    cache_protocol = "anthropic"  # how gate_key reads a body's shared prefix

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        name: str | None = None,
        provider: str | None = None,
        headers: dict[str, str] | None = None,
        key_env: str | None = None,
        pool: HttpPool | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.provider = provider or self.default_provider
        self.name = name or self.provider
        # A query (Azure's ?api-version=) follows the endpoint's path, not the base's.
        base, sep, query = base_url.partition("?")
        self._url = self._endpoint(base.rstrip("/")) + sep + query
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            **self._auth_headers(api_key),
            **(headers or {}),
        }
        self._stream_headers = {**self._headers, "Accept": "text/event-stream"}
        self._key_env = key_env
        self._pool = pool or HttpPool()
        self._clock: Clock = clock or RealClock()

    @abstractmethod
    def _endpoint(self, base_url: str) -> str: ...

    @abstractmethod
    def _auth_headers(self, api_key: str | None) -> dict[str, str]: ...

    @classmethod
    def from_channel(cls, channel: ChannelConfig, *, clock: Clock | None = None,
                     base_url: str | None = None) -> Self:
        return cls(
            base_url=base_url or channel.base_url,
            api_key=channel.key(),
            name=channel.name,
            provider=channel.provider or channel.name,
            headers=dict(channel.headers),
            key_env=channel.api_key_env,
            # Never fewer connections than the channel's concurrency cap: a stream holds
            # its connection to the end, so a pool of 100 would cap a gateway carrying
            # 256 streams at 100 (the rest waiting out pool_timeout).
            pool=HttpPool(
                pool_size=max(channel.pool_size, channel.max_concurrency or 0),
                connect_timeout=channel.connect_timeout,
                read_timeout=channel.read_timeout, pool_timeout=channel.pool_timeout,
            ),
            clock=clock,
        )

    def __repr__(self) -> str:  # never the headers: they hold the key
        return f"{type(self).__name__}(name={self.name!r}, url={self._url!r})"

    async def aclose(self) -> None:
        await self._pool.aclose()

    def _fail(self, status: int, text: str, headers: Mapping[str, str]) -> ProviderError:
        return error_from_response(
            status, text, headers, provider=self.name, now_wall=self._clock.wall(),
            key_env=self._key_env,
        )

    def _broken(self, exc: ProviderError, *, output_began: bool, partial_output: str,
                usage: Usage | None) -> ProviderError:
        """The error a stream raises when it fails: ``exc`` itself (with the usage seen so
        far) before any output, so the router may retry or fail over; after output began,
        a StreamInterrupted to raise ``from exc``, with the partial output."""
        if exc.usage is None:
            exc.usage = usage
        if not output_began:
            return exc
        return interrupted(exc, provider=self.name, partial_output=partial_output)

    def _whole_body(self, text: str) -> Any:
        """The decoded JSON of a whole-body answer to a stream request (``sse.JSON_BODY``)."""
        try:
            return fastjson.loads(text)
        except ValueError:
            raise MalformedResponse(
                f"{self.name} answered a stream request with a JSON body that does not parse",
                status=200, provider=self.name, body=text,
            ) from None

    def _headers_for(self, request: ChatRequest, *, stream: bool) -> dict[str, str]:
        base = self._stream_headers if stream else self._headers
        tag = request.metadata.get("tag")
        return base if tag is None else {**base, "x-shoal-tag": tag}

    async def complete_then(self, request: ChatRequest, *, model: str,
                            received: Callable[[], object] | None) -> ChatResponse:
        return await self.send(self.prepare(request, model=model), received=received)

    def _prepared(self, request: ChatRequest, model: str, payload: dict[str, Any]
                  ) -> Prepared:
        """``payload`` as sent: encoded, with the cache gate it must pass."""
        return Prepared(request, model, payload, fastjson.dumps(payload),
                        gate_key(payload, request, self.cache_protocol))

    async def _post_json(self, prepared: Prepared, received: Callable[[], object] | None
                         ) -> tuple[Prepared, Any, bytes]:
        """POST a prepared body through the adapter's cache gate (one writer per shared
        prefix); the request as sent, and the decoded JSON answer and its raw bytes, or
        a shoal error. ``received()`` runs once a 200 answer is read, before it is
        decoded; when it says a queued call took the slot (true), this call yields
        (:data:`HANDOFF_YIELDS`) so that call's request is on the wire before this one
        decodes and books its answer. Only then: a yield costs a loop iteration, ~15 µs
        of CPU at 50 concurrent calls."""
        data = prepared.data
        if prepared.payload is None or data is None:  # not made by our prepare()
            prepared = self.prepare(prepared.request, model=prepared.model)
            data = prepared.data or fastjson.dumps(prepared.payload)
        gate = prepared.gate
        turn = NO_TURN if gate is None else await enter_gate(self, self._clock, gate)
        status = 0
        headers = self._headers
        if prepared.request.metadata.get("tag") is not None:
            headers = self._headers_for(prepared.request, stream=False)
        try:
            # Awaited and released here rather than ``async with``: the same release,
            # without the context managers' coroutines per call.
            resp = await self._pool.session().post(self._url, data=data, headers=headers,
                                                   allow_redirects=False)
            try:
                status = resp.status
                raw = await resp.read()
                if not 200 <= status < 300:  # any 2xx is an answer, as the SDKs read it
                    raise self._fail(status, raw.decode("utf-8", "replace"), resp.headers)
            finally:
                resp.release()
            turn.began()  # an answer: the prefix is cached, the gate's waiters may go
        except transport_errors() as exc:
            err = error_from_transport(exc, provider=self.name, url=self._url, status=status)
            if 200 <= status < 300 and isinstance(err, ProviderUnavailable):
                # The answer itself, cut on its way: the provider made (and billed) it, so
                # it is a broken answer (charged as waste, retried), not a server error.
                raise MalformedResponse(
                    f"{err.message}: a broken answer the provider made and billed, retried",
                    status=status, provider=self.name) from exc
            raise err from exc
        finally:
            turn.end(ok=False)
        if received is not None and received():  # hand_off, without a coroutine per call
            for _ in range(HANDOFF_YIELDS):
                await asyncio.sleep(0)
        try:
            return prepared, fastjson.loads(raw), raw
        except ValueError:
            raise self._not_json(status, resp.headers, raw) from None

    def _not_json(self, status: int, headers: Mapping[str, str], raw: bytes
                  ) -> ProviderError:
        """The error for a 2xx answer to ``complete`` whose body does not parse: no answer
        (empty, or a proxy's page of a type that is not JSON: nothing billed), else a
        broken one (``MalformedResponse``, charged as waste)."""
        text = raw.decode("utf-8", "replace")
        kind = headers.get("Content-Type")
        err = not_an_answer(self.name, status, kind, text)
        if err is not None:
            return err
        return MalformedResponse(
            f"{self.name} answered HTTP {status} ({kind or 'no Content-Type'}) with a body "
            "that is not JSON: a broken answer, retried", status=status,
            provider=self.name, body=text)

    async def _sse(self, request: ChatRequest, payload: dict[str, Any]
                   ) -> AsyncGenerator[tuple[str, str], None]:
        """POST ``payload`` as a stream; yield its SSE ``(event, data)`` pairs. Use it under
        ``contextlib.aclosing`` so stopping early returns the connection.

        A 200 whose body is one JSON document (``Content-Type: …json``, or a body that
        starts with ``{``: a proxy that ignored ``stream``, MiniMax ``base_resp``) is
        yielded once as ``(sse.JSON_BODY, text)``: the adapter parses it as a non-stream
        answer or error. Lines are split here, so events of any size parse."""
        from shoal.providers.sse import iter_sse

        data = fastjson.dumps(payload)
        status = 0
        try:
            async with self._pool.session().post(
                self._url, data=data, headers=self._headers_for(request, stream=True),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                if not 200 <= status < 300:
                    text = (await resp.read()).decode("utf-8", "replace")
                    raise self._fail(status, text, resp.headers)
                kind = resp.headers.get("Content-Type", "")
                async for item in iter_sse(resp.content.iter_any(), whole_json="json" in kind,
                                           provider=self.name, content_type=kind,
                                           status=status):
                    yield item
        except transport_errors() as exc:
            # Before the answer's status: a connection failure, as for ``complete``; after
            # a 2xx, the stream was cut (a StreamInterrupted keeping that status).
            raise error_from_transport(exc, provider=self.name, url=self._url, status=status,
                                       in_stream=200 <= status < 300) from exc


def answer_events(response: ChatResponse) -> list[StreamEvent]:
    """A whole answer as the stream events it stands for (reasoning, text, each tool call,
    usage, then ``StreamEnd``): how a JSON 200 answer to a stream request is delivered."""
    out: list[StreamEvent] = []
    if response.reasoning:
        out.append(ReasoningDelta(response.reasoning))
    if response.text:
        out.append(TextDelta(response.text, logprobs=response.logprobs or ()))
    for i, call in enumerate(response.tool_calls):
        out.append(ToolCallDelta(index=i, id=call.id, name=call.name, arguments=call.arguments))
    out.append(UsageEvent(response.usage))
    out.append(StreamEnd(response))
    return out
