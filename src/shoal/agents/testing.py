"""A scripted :class:`~shoal.agents.client.ModelClient` for testing agents and flows offline.

A fake at the seam, like httpx's ``MockTransport``: each call takes the next item of
a script (or asks a handler function), so a test states exactly what the "model"
answers. Latency is slept on the injected clock, so flows can be tested in virtual
time, and in-flight calls are counted.

    client = ScriptedClient([call("search", query="llm"), reply("done")])
    result = await Runner(client).run(agent, "find it")
"""

from __future__ import annotations

import inspect
import itertools
import json
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from shoal.clock import Clock, RealClock
from shoal.config import ModelInfo
from shoal.errors import ConfigError
from shoal.observe.events import EventBus
from shoal.types import ChatRequest, ChatResponse, ToolCall, Usage

__all__ = ["Reply", "ScriptedClient", "call", "reply"]

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Reply:
    """A scripted answer: text and/or tool calls; usage is derived from sizes if not given."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage | None = None
    finish_reason: str | None = None


def reply(text: str, *, usage: Usage | None = None) -> Reply:
    """A final text answer."""
    return Reply(text=text, usage=usage)


def call(name: str, /, arguments: str | None = None, **kwargs: Any) -> Reply:
    """An answer calling tool ``name`` (``arguments`` raw JSON text, or keyword arguments)."""
    args = arguments if arguments is not None else json.dumps(kwargs)
    return Reply(tool_calls=(ToolCall(f"call_{next(_ids)}", name, args),))


Handler = Callable[[ChatRequest], Any]
"""A function of the request returning a Reply, a str, a ChatResponse or an exception
(to raise), or an awaitable of one."""
ScriptItem = Reply | ChatResponse | BaseException | Handler


def _approx_tokens(text: str) -> int:
    return (len(text) + 3) // 4


@dataclass
class ScriptedClient:
    """Answers calls from ``script`` (FIFO), then from ``handler`` (if any).

    Args:
        script: replies, exceptions to raise, or functions of the request.
        handler: answers every call once the script is used up.
        latency_s: seconds (or a function of the request) slept on ``clock`` per call.
        models: catalog entries by name; unknown names get ``default_info`` (priced at
            $1/$2 per million tokens) unless ``strict_models``.
        events: a bus for the runs, steps, agents and tools run through this client
            (as a Router's ``events``); the client itself emits no call events.
    """

    script: Iterable[ScriptItem] = ()
    handler: Handler | None = None
    clock: Clock = field(default_factory=RealClock)
    latency_s: float | Callable[[ChatRequest], float] = 0.0
    models: dict[str, ModelInfo] = field(default_factory=dict)
    strict_models: bool = False
    requests: list[ChatRequest] = field(default_factory=list)
    responses: list[ChatResponse] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    calls: int = 0
    events: EventBus | None = None

    def __post_init__(self) -> None:
        self._queue: deque[ScriptItem] = deque(self.script)

    def push(self, *items: ScriptItem) -> None:
        """Queue more scripted answers."""
        self._queue.extend(items)

    def model_info(self, name: str) -> ModelInfo:
        info = self.models.get(name)
        if info is not None:
            return info
        if self.strict_models:
            raise ConfigError(f"unknown model {name!r}")
        return ModelInfo(name=name, input=1.0, output=2.0, context_window=128_000,
                         max_output=8192)

    def estimate_tokens(self, request: ChatRequest) -> int:
        """~4 characters per token, 4 tokens per message, plus tools, schema and max_tokens."""
        n = sum(_approx_tokens(m.content) + 4 for m in request.messages)
        n += sum(_approx_tokens(c.arguments) for m in request.messages for c in m.tool_calls)
        n += sum(_approx_tokens(json.dumps(t.parameters)) + 8 for t in request.tools)
        if request.output_schema is not None:
            n += _approx_tokens(json.dumps(request.output_schema))
        return n + (request.max_tokens or 0)

    async def complete(
        self, request: ChatRequest, *, deadline_s: float | None = None
    ) -> ChatResponse:
        self.calls += 1
        self.requests.append(replace(request, messages=list(request.messages)))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            delay = self.latency_s(request) if callable(self.latency_s) else self.latency_s
            started = self.clock.now()
            if delay > 0:
                await self.clock.sleep(delay)
            item: Any = self._queue.popleft() if self._queue else self.handler
            if item is None:
                raise AssertionError(
                    f"ScriptedClient: no scripted answer left for call {self.calls} "
                    f"(model {request.model!r})"
                )
            if callable(item) and not isinstance(item, BaseException | type):
                item = item(request)
                if inspect.isawaitable(item):
                    item = await item
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, str):
                item = Reply(text=item)
            response: ChatResponse = (
                item if isinstance(item, ChatResponse)
                else self._response(request, item, self.clock.now() - started)
            )
            self.responses.append(response)
            return response
        finally:
            self.in_flight -= 1

    def _response(self, request: ChatRequest, r: Reply, latency: float) -> ChatResponse:
        prompt = self.estimate_tokens(replace(request, max_tokens=0))
        out = _approx_tokens(r.text) + sum(_approx_tokens(c.arguments) + 4 for c in r.tool_calls)
        usage = r.usage or Usage(prompt, max(1, out))
        info = self.model_info(request.model)
        finish = r.finish_reason or ("tool_calls" if r.tool_calls else "stop")
        return ChatResponse(
            text=r.text,
            tool_calls=list(r.tool_calls),
            finish_reason=finish,  # type: ignore[arg-type]  # scripted: any label is allowed
            usage=usage,
            provider="scripted",
            model=request.model,
            latency_s=latency,
            cost_usd=info.cost(usage),
            channel="scripted",
        )
