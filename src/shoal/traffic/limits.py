"""The in-process limiter: :class:`LocalLimiter`, behind the :class:`Limiter` seam.

The seam and its guarantees (FIFO waiters, no overshoot, cancellation safety) are in
:mod:`shoal.traffic.limiter`; its names are re-exported here, so
``from shoal.traffic.limits import Limiter, LocalLimiter, Permit`` keeps working.

RPM and TPM use a sliding-window log: an admission counts for exactly ``window_s``
seconds after it was made, so *any* 60-second window sees at most ``rpm`` requests.
A token bucket of size ``rpm`` refilled at ``rpm/60`` per second would let ``rpm``
through at once and ``rpm`` more over the next minute: up to 2× the limit inside one
provider window, which is exactly the 429 we promise not to provoke.
"""

from __future__ import annotations

import asyncio
from collections import deque

from shoal.clock import Clock, RealClock
from shoal.errors import ConfigError, DeadlineExceeded, RunError
from shoal.observe.events import SETTLE, WAIT, EventBus
from shoal.traffic.limiter import WINDOW_S, Limiter, Permit, check_tokens

__all__ = ["WINDOW_S", "Limiter", "LocalLimiter", "Permit", "check_tokens"]

# Smallest timer delay: guards against a float window edge that never quite passes.
_MIN_DELAY = 1e-6


class _TokenEntry:
    """One admission in the TPM log; ``tokens`` changes when its permit settles."""

    __slots__ = ("at", "tokens")

    def __init__(self, at: float, tokens: int) -> None:
        self.at = at
        self.tokens = tokens


class _Waiter:
    __slots__ = ("fut", "tokens")

    def __init__(self, fut: asyncio.Future[Permit], tokens: int) -> None:
        self.fut = fut
        self.tokens = tokens


def _check_limit(name: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise ConfigError(f"{name} must be >= 1 (or None for no limit), got {value}")
    return value


class LocalLimiter(Limiter):
    """A limiter for one process: concurrency + sliding-window RPM/TPM, FIFO waiters.

    The fast path (free capacity, nobody queued) takes no lock, creates no task and,
    without RPM/TPM, does not read the clock.
    """

    def __init__(
        self,
        *,
        max_concurrency: int | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        clock: Clock | None = None,
        name: str = "",
        events: EventBus | None = None,
        window_s: float = WINDOW_S,
    ) -> None:
        if window_s <= 0:
            raise ConfigError(f"window_s must be > 0, got {window_s}")
        self.name = name
        self._cap = _check_limit("max_concurrency", max_concurrency)
        self._rpm = _check_limit("rpm", rpm)
        self._tpm = _check_limit("tpm", tpm)
        self._windowed = rpm is not None or tpm is not None
        self._window = window_s
        self._clock: Clock = clock if clock is not None else RealClock()
        self._events = events
        self._in_flight = 0
        self._rpm_log: deque[float] = deque()
        self._tpm_log: deque[_TokenEntry] = deque()
        self._tpm_used = 0
        self._waiters: deque[_Waiter] = deque()
        self._n_waiting = 0
        self._timer: asyncio.Task[None] | None = None
        self._timer_at = 0.0
        self._change: asyncio.Future[None] | None = None
        self._closed = False

    # -- introspection ---------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def capacity(self) -> int | None:
        return self._cap

    @property
    def waiting(self) -> int:
        """Calls queued in :meth:`acquire`."""
        return self._n_waiting

    @property
    def rpm(self) -> int | None:
        return self._rpm

    @property
    def tpm(self) -> int | None:
        return self._tpm

    @property
    def counts_tokens(self) -> bool:
        return self._tpm is not None

    def __repr__(self) -> str:
        return (
            f"LocalLimiter({self.name!r}, in_flight={self._in_flight}, cap={self._cap}, "
            f"rpm={self._rpm}, tpm={self._tpm}, waiting={self._n_waiting})"
        )

    # -- acquiring -------------------------------------------------------------------

    def _check_tokens(self, tokens: int) -> None:
        check_tokens(self.name, tokens, self._tpm)

    def _prune(self, now: float) -> None:
        cutoff = now - self._window
        rpm_log = self._rpm_log
        while rpm_log and rpm_log[0] <= cutoff:
            rpm_log.popleft()
        tpm_log = self._tpm_log
        while tpm_log and tpm_log[0].at <= cutoff:
            self._tpm_used -= tpm_log.popleft().tokens

    def _admit(self, tokens: int) -> Permit | None:
        """Take a slot if concurrency and both windows allow; ignores the queue."""
        if self._cap is not None and self._in_flight >= self._cap:
            return None
        entry: _TokenEntry | None = None
        if self._windowed:
            now = self._clock.now()
            self._prune(now)
            if self._rpm is not None and len(self._rpm_log) >= self._rpm:
                return None
            if self._tpm is not None:
                if self._tpm_used + tokens > self._tpm:
                    return None
                entry = _TokenEntry(now, tokens)
                self._tpm_log.append(entry)
                self._tpm_used += tokens
            if self._rpm is not None:
                self._rpm_log.append(now)
        self._in_flight += 1
        return Permit(self, tokens, self._in_flight, entry)

    def _window_wait(self, tokens: int) -> float:
        """Seconds until both windows would admit ``tokens`` (0.0 if they would now)."""
        if not self._windowed:
            return 0.0
        now = self._clock.now()
        self._prune(now)
        wait = 0.0
        if self._rpm is not None and len(self._rpm_log) >= self._rpm:
            # The oldest entries must leave until one place is free.
            oldest = self._rpm_log[len(self._rpm_log) - self._rpm]
            wait = max(wait, oldest + self._window - now)
        if self._tpm is not None and self._tpm_used + tokens > self._tpm:
            excess = self._tpm_used + tokens - self._tpm
            for entry in self._tpm_log:
                excess -= entry.tokens
                if excess <= 0:
                    wait = max(wait, entry.at + self._window - now)
                    break
        return wait

    def try_acquire(self, tokens: int = 0) -> Permit | None:
        self._check_tokens(tokens)
        if self._n_waiting or self._closed:
            return None
        return self._admit(tokens)

    async def acquire(self, tokens: int = 0, *, timeout: float | None = None) -> Permit:  # noqa: ASYNC109
        permit = self.try_acquire(tokens)
        if permit is not None:
            return permit
        if self._closed:
            raise RunError(f"limiter {self.name!r} is closed")
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded(
                f"no capacity on channel {self.name or '(unnamed)'} and the call's deadline "
                "has passed"
            )
        return await self._wait(tokens, timeout)

    async def _wait(self, tokens: int, timeout: float | None) -> Permit:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), tokens)
        self._waiters.append(waiter)
        self._n_waiting += 1
        events = self._events
        if events is not None and events.active:
            events.emit(
                WAIT, channel=self.name, tokens=tokens, in_flight=self._in_flight,
                queued=self._n_waiting,
            )
        expiry: asyncio.TimerHandle | asyncio.Task[None] | None = None
        if timeout is not None:
            if type(self._clock) is RealClock:  # one timer handle, no task: the hot path
                expiry = loop.call_later(timeout, self._expire_now, waiter, timeout)
            else:  # a virtual clock is not the loop's: sleep on it
                expiry = loop.create_task(self._expire(waiter, timeout))
        if self._windowed:
            self._wake()  # arms the window timer when a window, not concurrency, blocks the head
        try:
            return await waiter.fut
        except asyncio.CancelledError:
            fut = waiter.fut
            if not fut.done() or fut.cancelled():
                # Cancelled while queued: leave the queue (lazily) and let others move up.
                self._n_waiting -= 1
                self._wake()
            elif fut.exception() is None:
                # Cancelled exactly as a slot was handed over: give it back.
                fut.result().release()
            raise
        finally:
            if expiry is not None:
                expiry.cancel()

    async def _expire(self, waiter: _Waiter, timeout: float) -> None:  # noqa: ASYNC109
        await self._clock.sleep(timeout)
        self._expire_now(waiter, timeout)

    def _expire_now(self, waiter: _Waiter, timeout: float) -> None:
        if not waiter.fut.done():
            self._n_waiting -= 1
            waiter.fut.set_exception(
                DeadlineExceeded(
                    f"waited {timeout:g}s for capacity on channel {self.name or '(unnamed)'} "
                    f"(in flight {self._in_flight}, cap {self._cap}, rpm {self._rpm}, "
                    f"tpm {self._tpm}); raise the deadline or the channel's limits"
                )
            )
            self._wake()

    def _wake(self) -> None:
        """Hand slots to queued waiters in FIFO order while the head can be admitted."""
        waiters = self._waiters
        while waiters:
            head = waiters[0]
            if head.fut.done():  # cancelled or timed out: already uncounted
                waiters.popleft()
                continue
            permit = self._admit(head.tokens)
            if permit is None:
                if self._cap is None or self._in_flight < self._cap:
                    self._arm_timer(self._window_wait(head.tokens))
                return
            waiters.popleft()
            self._n_waiting -= 1
            head.fut.set_result(permit)

    def _arm_timer(self, delay: float) -> None:
        delay = max(delay, _MIN_DELAY)
        at = self._clock.now() + delay
        timer = self._timer
        if timer is not None and not timer.done():
            if self._timer_at <= at:
                return
            timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().create_task(self._fire(delay))

    async def _fire(self, delay: float) -> None:
        await self._clock.sleep(delay)
        self._timer = None
        self._wake()
        self._notify()

    # -- releasing -------------------------------------------------------------------

    def _release(self, permit: Permit) -> None:
        self._in_flight -= 1
        if self._n_waiting:
            self._wake()
        if self._change is not None:
            self._notify()

    def _settle(self, permit: Permit, actual_tokens: int) -> None:
        reserved = permit.tokens
        permit.tokens = actual_tokens
        entry = permit._handle
        if isinstance(entry, _TokenEntry):
            # An entry that already left the window no longer counts either way.
            if entry.at > self._clock.now() - self._window:
                self._tpm_used += actual_tokens - reserved
            entry.tokens = actual_tokens
            events = self._events  # without a TPM window there is no reservation to correct
            if events is not None and events.active:
                events.emit(SETTLE, channel=self.name, reserved=reserved, actual=actual_tokens)
        if actual_tokens < reserved:
            if self._n_waiting:
                self._wake()
            self._notify()

    def set_capacity(self, n: int, *, ceiling: int | None = None) -> None:
        if n < 1:
            raise ConfigError(f"capacity must be >= 1, got {n}")
        old = self._cap
        self._cap = n
        if old is None or n > old:
            if self._n_waiting:
                self._wake()
            self._notify()

    # -- waiting for change ----------------------------------------------------------

    def retry_in(self, tokens: int = 0) -> float | None:
        self._check_tokens(tokens)
        wait = self._window_wait(tokens)
        if wait > 0:
            return wait
        if self._n_waiting or (self._cap is not None and self._in_flight >= self._cap):
            return None
        return 0.0

    def _notify(self) -> None:
        fut = self._change
        if fut is not None:
            self._change = None
            if not fut.done():
                fut.set_result(None)

    async def wait_for_change(self, timeout: float) -> None:  # noqa: ASYNC109
        wait = self.retry_in()
        if wait == 0.0 or timeout <= 0:
            await asyncio.sleep(0)
            return
        delay = timeout if wait is None else min(timeout, wait)
        loop = asyncio.get_running_loop()
        fut = self._change
        if fut is None:
            fut = self._change = loop.create_future()
        sleeper = loop.create_task(self._clock.sleep(delay))
        try:
            await asyncio.wait((fut, sleeper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()

    async def aclose(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.fut.done():
                self._n_waiting -= 1
                waiter.fut.set_exception(
                    RunError(f"limiter {self.name!r} was closed while this call waited")
                )
        self._notify()
