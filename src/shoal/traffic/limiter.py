"""The Limiter seam: what every limiter (in-process or shared) promises.

A :class:`Limiter` holds one channel's capacity: concurrent calls, requests per
minute (RPM) and tokens per minute (TPM). A call takes a :class:`Permit` before it
goes out and releases it when its response is done; TPM is reserved with the
caller's estimate (prompt + max_tokens) and corrected with :meth:`Permit.settle`.

Guarantees of every limiter:

* it waits rather than overshoots: with known limits no 429 is provoked;
* waiters are admitted first-in, first-out (a large request at the head is not
  starved by small ones behind it);
* cancellation-safe: a waiter cancelled in the queue, or at the very moment it was
  granted a slot, or timed out, never leaks a slot.

``timeout`` arguments are seconds of the injected :class:`~shoal.clock.Clock` (virtual
in tests), which ``asyncio.timeout`` cannot follow: hence the ``noqa: ASYNC109``.

Events: a call that has to queue emits ``wait``; a TPM correction emits ``settle``.
``admit`` is the Router's to emit (it knows the model and the attempt).

Implementations: :class:`~shoal.traffic.limits.LocalLimiter` (one process) and
:class:`~shoal.traffic.redis_limits.RedisLimiter` (shared through Redis).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

from shoal.errors import ConfigError

__all__ = ["WINDOW_S", "Limiter", "Permit", "check_tokens"]

WINDOW_S = 60.0


def check_tokens(channel: str, tokens: int, tpm: int | None) -> None:
    """Refuse a reservation no limiter could ever admit, instead of letting it wait forever."""
    if tokens < 0:
        raise ConfigError(f"tokens must be >= 0, got {tokens}")
    if tpm is not None and tokens > tpm:
        raise ConfigError(
            f"a request estimated at {tokens} tokens can never fit channel "
            f"{channel or '(unnamed)'}'s tpm={tpm}: raise the channel's tpm, "
            "lower max_tokens, or shorten the prompt"
        )


class Permit:
    """A held slot on a limiter. ``release()`` it when the call is done (idempotent).

    ``tokens`` is the current TPM reservation; ``in_flight`` is how many calls the
    limiter had in flight right after admitting this one (it included), which adaptive
    concurrency uses to learn where a provider's cap lies.
    """

    __slots__ = ("_handle", "_limiter", "_released", "in_flight", "tokens")

    def __init__(
        self, limiter: Limiter, tokens: int, in_flight: int, handle: object = None
    ) -> None:
        self._limiter = limiter
        self._released = False
        self._handle = handle
        self.tokens = tokens
        self.in_flight = in_flight

    @property
    def released(self) -> bool:
        return self._released

    def settle(self, actual_tokens: int) -> None:
        """Replace the TPM reservation with the tokens the call really used."""
        if actual_tokens < 0:
            raise ConfigError(f"actual_tokens must be >= 0, got {actual_tokens}")
        if actual_tokens != self.tokens:
            self._limiter._settle(self, actual_tokens)

    def release(self) -> None:
        """Return the concurrency slot. Calling it again does nothing."""
        if not self._released:
            self._released = True
            self._limiter._release(self)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"Permit({self._limiter.name!r}, tokens={self.tokens}, {state})"


class Limiter(ABC):
    """One channel's capacity, in-process or shared. See the module docstring."""

    name: str = ""

    @property
    @abstractmethod
    def in_flight(self) -> int:
        """Permits held (through this limiter object) and not yet released."""

    @property
    @abstractmethod
    def capacity(self) -> int | None:
        """The current concurrency cap (``None``: unlimited)."""

    @abstractmethod
    def try_acquire(self, tokens: int = 0) -> Permit | None:
        """A permit if one is free right now and nobody queues ahead; never waits."""

    async def atry_acquire(self, tokens: int = 0) -> Permit | None:
        """Like :meth:`try_acquire`, for limiters that need a round trip to answer."""
        return self.try_acquire(tokens)

    @abstractmethod
    async def acquire(self, tokens: int = 0, *, timeout: float | None = None) -> Permit:  # noqa: ASYNC109
        """Wait (FIFO) for a permit; raises ``DeadlineExceeded`` after ``timeout`` seconds.

        A cancelled or timed-out waiter never leaks a slot."""

    @abstractmethod
    def retry_in(self, tokens: int = 0) -> float | None:
        """Seconds until ``try_acquire(tokens)`` could pass: 0.0 when it would pass now,
        the RPM/TPM window wait when a window blocks, ``None`` when only concurrency
        (or the queue) blocks, which no clock can predict."""

    @abstractmethod
    async def wait_for_change(self, timeout: float) -> None:  # noqa: ASYNC109
        """Return when capacity may have freed (a release, a window edge, a raised cap),
        or after ``timeout`` seconds. Returns at once when capacity is free now."""

    @abstractmethod
    def set_capacity(self, n: int, *, ceiling: int | None = None) -> None:
        """Change the concurrency cap (adaptive concurrency drives this). ``ceiling``:
        the learned ceiling behind it, shared with other processes by shared limiters
        (so a cap halved for overload is not taken for a ceiling elsewhere)."""

    @property
    def counts_tokens(self) -> bool:
        """Whether ``tokens`` matter here (a TPM window). When False, callers may pass 0
        instead of estimating a prompt; a limiter that does not say is assumed to."""
        return True

    @property
    def waiting(self) -> int:
        """Calls queued in :meth:`acquire` here (0 for a limiter that does not say)."""
        return 0

    @property
    def ceiling(self) -> int | None:
        """The learned ceiling written with the cap in force (shared limiters); None."""
        return None

    async def connect(self) -> None:  # noqa: B027 - optional hook: local limiters need none
        """Open connections now rather than on the first acquire (a warm-up)."""

    def seed_capacity(self, n: int) -> None:
        """Set the starting cap unless one is already in force elsewhere (a shared
        limiter keeps the cap other processes learned); local limiters just set it."""
        self.set_capacity(n)

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most limiters hold nothing
        """Release background resources; waiting calls fail with ``RunError``."""

    @asynccontextmanager
    async def slot(
        self, tokens: int = 0, *, timeout: float | None = None  # noqa: ASYNC109
    ) -> AsyncIterator[Permit]:
        """``async with limiter.slot(est) as permit:`` acquire, then always release."""
        permit = await self.acquire(tokens, timeout=timeout)
        try:
            yield permit
        finally:
            permit.release()

    async def __aenter__(self) -> Limiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @abstractmethod
    def _release(self, permit: Permit) -> None: ...

    @abstractmethod
    def _settle(self, permit: Permit, actual_tokens: int) -> None: ...
