"""Idempotent side effects: a tool's effect happens once per key, across resumes.

    @tool
    @idempotent(key="refund:{order_id}")
    async def refund(order_id: str, amount: float) -> str: ...

Under a journal (:class:`~shoal.flows.journal.StoreRecorder`) the first call's result
is recorded with ``Store.put_effect``; a later call with the same key (a resumed run
re-executing the tool calls of a partly finished agent) gets the recorded result and
the tool does not run. The guarantee is at-least-once around a crash between the
effect and its record: pass :func:`effect_key` to the API you call (an
``Idempotency-Key`` header) to close that gap.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, get_args, get_type_hints, overload

from shoal.agents.recorder import from_jsonable, to_jsonable
from shoal.agents.run_context import RunContext
from shoal.errors import ConfigError

__all__ = ["EffectJournal", "effect_key", "idempotent"]

AsyncFn = Callable[..., Awaitable[Any]]
_EFFECT_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "shoal_effect_key", default=None)


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


class EffectJournal(Protocol):
    """A recorder that can record side effects (:class:`StoreRecorder` is one)."""

    async def effect(
        self, key: str, run_id: str, step_id: str | None, run: Callable[[], Awaitable[Any]]
    ) -> Any: ...


def effect_key() -> str | None:
    """Inside an :func:`idempotent` tool: its idempotency key (pass it on to the API you
    call, e.g. as an ``Idempotency-Key`` header, to make the effect exactly-once)."""
    return _EFFECT_KEY.get()


@overload
def idempotent(fn: Callable[..., Any], /) -> AsyncFn: ...


@overload
def idempotent(
    *, key: str | Callable[..., str] | None = None
) -> Callable[[Callable[..., Any]], AsyncFn]: ...


def idempotent(
    fn: Callable[..., Any] | None = None, /, *, key: str | Callable[..., str] | None = None
) -> AsyncFn | Callable[[Callable[..., Any]], AsyncFn]:
    """Make a tool's side effect happen once per key, across resumes.

    ``key``: a template filled with the tool's arguments (``"email:{to}:{subject}"``), a
    function of them returning a string, or None: the call's place in the run (run,
    step, turn, tool, arguments). A template or function key is store-wide: the same
    key in another run also gets the recorded result. Under a journal
    (:class:`StoreRecorder`) the first call's result is recorded; later calls with the
    key return it without running the tool. Without one the tool simply runs.
    Results come back as the tool's return type, rebuilt from JSON. The wrapped
    function is async (a sync one runs in a worker thread).

    Apply it under ``@tool``::

        @tool
        @idempotent(key="refund:{order_id}")
        async def refund(order_id: str, amount: float) -> str: ...
    """

    def wrap(f: Callable[..., Any]) -> AsyncFn:
        return _wrap(f, key)

    return wrap(fn) if fn is not None else wrap


def _wrap(f: Callable[..., Any], key: str | Callable[..., str] | None) -> AsyncFn:
    from shoal.agents.tools import Tool

    if isinstance(f, Tool):
        raise ConfigError(f"@idempotent goes under @tool (it wraps the function of {f!r})")
    sig = inspect.signature(f)
    try:
        hints = get_type_hints(f, include_extras=True)
    except Exception as exc:
        raise ConfigError(f"cannot read the type hints of {f.__name__!r}: {exc}") from exc
    ctx_name = next((n for n in sig.parameters
                     if hints.get(n) is RunContext or RunContext in get_args(hints.get(n))),
                    None)
    added = ctx_name is None
    params = list(sig.parameters.values())
    if ctx_name is None:  # a hidden parameter: Tool passes the RunContext, the model never sees it
        ctx_name = "shoal_run_context"
        params.append(inspect.Parameter(ctx_name, inspect.Parameter.KEYWORD_ONLY,
                                        annotation=RunContext))
        hints[ctx_name] = RunContext
    returns = hints.get("return", Any)
    is_async = inspect.iscoroutinefunction(f)
    name = f.__name__

    async def call(*args: Any, **kwargs: Any) -> Any:
        ctx = kwargs.pop(ctx_name, None) if added else None
        bound = sig.bind(*args, **kwargs)
        if not added:
            ctx = bound.arguments.get(ctx_name)
        values = {k: v for k, v in bound.arguments.items() if k != ctx_name}
        if key is not None:
            effect: str | None = key.format(**values) if isinstance(key, str) else key(**values)
        elif isinstance(ctx, RunContext):
            digest = _digest(to_jsonable(values))[:16]
            effect = f"{ctx.run_id}/{ctx.step_id}/turn/{ctx.turn}/{name}/{digest}"
        else:
            effect = None

        async def run() -> Any:
            token = _EFFECT_KEY.set(effect)
            try:
                if is_async:
                    return await f(*bound.args, **bound.kwargs)
                return await asyncio.to_thread(f, *bound.args, **bound.kwargs)
            finally:
                _EFFECT_KEY.reset(token)

        journal = getattr(getattr(ctx, "runner", None), "recorder", None)
        if not isinstance(ctx, RunContext) or not callable(getattr(journal, "effect", None)):
            return await run()  # called directly, or with no journal: it simply runs
        assert effect is not None
        data = await journal.effect(effect, ctx.run_id, ctx.step_id, run)  # type: ignore[union-attr]
        return from_jsonable(data, returns)

    call.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    call.__annotations__ = hints
    for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
        setattr(call, attr, getattr(f, attr, None))
    return call
