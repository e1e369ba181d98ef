"""Where the code running now belongs: run id, step, agent and model call.

A :class:`Scope` lives in a ContextVar. The flow sets the run id, the scheduler the
step, the runner the agent and its turn, and the Router (only while someone listens to its events)
the id of the logical model call. :meth:`shoal.observe.events.EventBus.publish` adds
the scope's fields to every event that does not carry them itself, so an event from
deep in the traffic layer (a retry, a breaker transition, a limiter wait) still says
which run, step, agent and call it belongs to.

asyncio tasks copy the context when they are created, so a step's task, an agent's
tool calls and a call's attempts inherit the scope of whoever started them; setting it
inside a task never leaks into its parent.

The scope also carries the model call's request and response (:class:`CallNote`) for
exporters that record content on request (traces with ``capture_content=True``): the
content is never put in event data, which other exporters serialize.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from shoal.types import ChatRequest, ChatResponse

__all__ = ["CallNote", "Scope", "current", "enter", "enter_call", "leave", "new_call_id",
           "scope", "set_scope"]


class CallNote:
    """One logical model call as the Router sees it while events are on: its id, the
    request (and the answer once there is one), and time queued for capacity."""

    __slots__ = ("call_id", "queue_s", "request", "response", "started", "tags", "ttft_s")

    def __init__(self, call_id: str, request: ChatRequest, started: float) -> None:
        self.call_id = call_id
        self.request = request
        self.response: ChatResponse | None = None
        self.started = started
        self.queue_s = 0.0
        self.ttft_s: float | None = None
        # the scope's fields as events carry them, and the secrets version they were
        # redacted for (made by shoal.observe.events at the call's first event)
        self.tags: tuple[object, dict[str, object]] | None = None


class Scope(NamedTuple):
    """The run, step, agent and model call the running code belongs to ("" when none).
    Immutable (a named tuple: the Router makes one per observed call)."""

    run_id: str = ""
    step: str = ""
    agent: str = ""
    turn: int | None = None
    call_id: str = ""
    call: CallNote | None = None


EMPTY = Scope()
# the named tuple's Python-level ``__new__`` skipped on the hot path (same value)
_new_scope: Callable[[type[Scope], tuple[str, str, str, int | None, str, CallNote | None]],
                     Scope] = tuple.__new__
_scope: ContextVar[Scope] = ContextVar("shoal_observe_scope", default=EMPTY)
_ids = itertools.count(1)


# The scope of the running code (:data:`EMPTY` outside any run): the ContextVar's own
# ``get``, called straight (no Python frame: it runs several times per model call).
current: Callable[[], Scope] = _scope.get


def enter(
    *, run_id: str | None = None, step: str | None = None, agent: str | None = None,
    turn: int | None = None, call: CallNote | None = None,
) -> Token[Scope]:
    """Narrow the current scope (fields left None keep their value); pass the token to
    :func:`leave` when done. Entering a run clears step and agent; a step, the agent;
    an agent, its turn."""
    old = _scope.get()
    if run_id is not None:
        new = Scope(run_id, step or "", agent or "")
    elif step is not None:
        new = Scope(old.run_id, step, agent or "")
    elif agent is not None:
        new = Scope(old.run_id, old.step, agent)
    elif call is not None:  # the Router's observed call: the hot path
        return _scope.set(Scope(old.run_id, old.step, old.agent, old.turn if turn is None
                                else turn, call.call_id, call))
    else:
        new = old
    if turn is not None:
        new = new._replace(turn=turn)
    if call is not None:
        new = new._replace(call_id=call.call_id, call=call)
    return _scope.set(new)


def enter_call(call: CallNote, outer: Scope) -> Token[Scope]:
    """``enter(call=call)`` where ``outer`` is the current scope (the Router's observed
    call, the hot path: one tuple and one ContextVar set)."""
    return _scope.set(_new_scope(Scope, (outer.run_id, outer.step, outer.agent, outer.turn,
                                         call.call_id, call)))


# ``set_scope(scope)``: make ``scope`` (one :func:`current` returned earlier) current
# as it is; pass the token to :func:`leave` when done. ``leave(token)``: restore the
# scope :func:`enter` (or ``set_scope``) replaced. The ContextVar's own ``set`` and
# ``reset``, called straight (the Router's observed calls use both on every call).
set_scope: Callable[[Scope], Token[Scope]] = _scope.set
leave: Callable[[Token[Scope]], None] = _scope.reset


@contextmanager
def scope(
    *, run_id: str | None = None, step: str | None = None, agent: str | None = None
) -> Iterator[Scope]:
    """``with scope(run_id=...):`` — :func:`enter` and :func:`leave` around a block."""
    token = enter(run_id=run_id, step=step, agent=agent)
    try:
        yield _scope.get()
    finally:
        leave(token)


def new_call_id() -> str:
    """A process-unique id for one logical model call (tool calls use the model's id)."""
    return f"c{next(_ids):x}"
