"""The Provider seam: one wire protocol spoken to one channel.

An adapter translates a provider-neutral :class:`~shoal.types.ChatRequest` into its
protocol, speaks it over the channel's pooled HTTP session, and maps every failure
once into :mod:`shoal.errors`. It raises nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal.types import ChatRequest, ChatResponse, StreamEvent

if TYPE_CHECKING:
    from shoal.providers.caching import CacheTTL

__all__ = ["Prepared", "Provider"]


@dataclass(slots=True, frozen=True)
class Prepared:
    """A request built for one adapter and wire model, ready to send: what
    :meth:`Provider.prepare` makes and :meth:`Provider.send` sends. ``payload``, ``data``
    (the body, as a dict and encoded) and ``gate`` are the adapter's; one that builds
    nothing ahead leaves them None."""

    request: ChatRequest
    model: str
    payload: dict[str, Any] | None = None
    data: bytes | None = None
    gate: tuple[str, CacheTTL] | None = None  # the prompt-cache warm gate to pass (caching)


class Provider(ABC):
    """``complete`` and ``stream`` for one channel; ``aclose`` releases its connections.

    ``model`` is the id to put on the wire (the router resolves catalog names and
    aliases to it); ``request.model`` is left as the caller wrote it.
    """

    name: str

    @abstractmethod
    async def complete(self, request: ChatRequest, *, model: str) -> ChatResponse: ...

    async def complete_then(self, request: ChatRequest, *, model: str,
                            received: Callable[[], object] | None) -> ChatResponse:
        """``complete``, calling ``received()`` as soon as the provider is done with the
        call: its answer read, not yet parsed. The Router hands the concurrency slot to
        the next call there, so parsing this answer overlaps the next request instead of
        delaying it. An adapter that cannot tell calls it when ``complete`` returns."""
        response = await self.complete(request, model=model)
        if received is not None:
            received()
        return response

    def prepare(self, request: ChatRequest, *, model: str) -> Prepared:
        """``request`` built (and encoded) for the wire, without sending it. The Router
        prepares a call that has to queue for a slot while it queues, so the slot's time
        is the wire's, not the encoder's. Raises what building it raises (a local
        refusal); the default builds nothing ahead."""
        return Prepared(request, model)

    async def send(self, prepared: Prepared, *,
                   received: Callable[[], object] | None) -> ChatResponse:
        """:meth:`complete_then` for a request :meth:`prepare` built."""
        return await self.complete_then(prepared.request, model=prepared.model,
                                        received=received)

    @abstractmethod
    def stream(self, request: ChatRequest, *, model: str) -> AsyncIterator[StreamEvent]:
        """Yield deltas, then exactly one ``StreamEnd`` carrying the whole normalized answer.

        A stream that stops before its end marker raises ``StreamInterrupted``."""

    @abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Provider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
