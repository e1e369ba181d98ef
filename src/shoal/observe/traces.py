"""OpenTelemetry traces built from shoal's events (``pip install 'shoal[otel]'``).

    import shoal.observe
    shoal.observe.tracing()            # OTLP over HTTP, configured by OTEL_* variables

One subscriber turns the event stream into spans, GenAI semantic conventions::

    run {flow}                      (run_start … run_end)
    └─ step {id}                    (step_start … step_end; map items under their step)
       └─ invoke_agent {agent}      (agent_start … agent_end)
          ├─ chat {model}           (call_end, which says how long the call took: one
          │                          logical Router call, whole at its end)
          └─ execute_tool {name}    (tool_start … tool_end)

Events are synchronous and calls concurrent, so spans are matched by key, not by
nesting: a run by ``run_id``, a step by (run_id, step), an agent by (run_id, step,
agent), a model call by ``call_id``, a tool call by (run_id, step, agent, call_id).
Retries, failovers, breaker changes, limiter waits and adaptive limit changes become
span events on the chat span of the call they happened in (or on the innermost span
of their scope). Span times are the events' times: the bus clock's monotonic seconds,
moved onto the wall clock by one offset taken at the first event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from shoal.observe import tracing_attrs as A
from shoal.observe.context import current
from shoal.observe.events import KINDS, Event, Routes
from shoal.observe.leaf_spans import LeafWriter

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

__all__ = ["SpanBuilder"]

# Traffic events recorded as span events (with their data as attributes).
_SPAN_EVENTS = frozenset({"retry", "failover", "breaker", "wait", "limit_change"})
_Key = tuple[str, ...]
_QUEUED_S = 0.001  # an admission after a wait this long is a "limiter_wait" span event
_MAX_KINDS = 4096  # kinds of chat span remembered (then each new one is made per call)
# call_end's fields as tuples (tests/unit/test_observe_traces_attrs.py holds the
# attribute names to A.CHAT_END and A.TOKENS_GEN_AI): the kind of call; what every chat
# span carries; what some carry
_CHAT_KIND = itemgetter("request_model", "stream", "provider", "served_model", "error_type")
_CHAT_COMMON = itemgetter("call_id", "attempts", "queue_s", "cost_usd", "input_tokens",
                          "output_tokens", "duration_s")
_CHAT_OPTIONAL = itemgetter("turn", "ttft_s", "wasted_cost_usd", "cached_input_tokens",
                            "cache_write_tokens", "reasoning_tokens")


def _attr(value: object) -> Any:
    """An attribute value OTel accepts (None dropped by the caller)."""
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


class _Leaf:
    """A chat or tool span not yet handed to OpenTelemetry: it has no children, so it
    is made whole at its end event (one attribute write instead of two: the SDK's
    attribute checks are most of a span's cost)."""

    __slots__ = ("attributes", "events", "name", "parent", "start_ns")

    def __init__(self, name: str, start_ns: int, parent: Span | None,
                 attributes: dict[str, Any]) -> None:
        self.name = name
        self.start_ns = start_ns
        self.parent = parent
        self.attributes = attributes
        self.events: list[tuple[str, dict[str, Any], int]] = []

    def add_event(self, name: str, attributes: dict[str, Any], timestamp: int) -> None:
        self.events.append((name, attributes, timestamp))


class SpanBuilder:
    """The event subscriber: opens and ends spans as start/end events arrive."""

    def __init__(self, tracer: Tracer, *, capture_content: bool = False,
                 own_provider: bool = False) -> None:
        self.tracer = tracer
        # chat and tool spans straight to the processor when that gives the SDK's spans
        self._writer = LeafWriter.make(tracer, own_provider)
        self.capture_content = capture_content
        self._offset_ns: int | None = None
        self._runs: dict[str, Span] = {}
        self._steps: dict[_Key, Span] = {}
        self._agents: dict[_Key, Span] = {}  # by (run_id, step, agent)
        self._agent_of_step: dict[_Key, Span] = {}  # by (run_id, step): the latest
        self._calls: dict[str, _Leaf] = {}
        # per kind of call_end: the chat span's name, shared attributes, error
        self._chats: dict[tuple[Any, ...], tuple[str, dict[str, Any], str]] = {}
        self._tools: dict[_Key, _Leaf] = {}
        from opentelemetry.trace import Status, StatusCode, set_span_in_context

        self._in_context = set_span_in_context
        self._error = (Status, StatusCode.ERROR)
        self._handlers: dict[str, Callable[[Event], None]] = {
            "run_start": self._run_start, "run_end": self._run_end,
            "step_start": self._step_start, "step_end": self._step_end,
            "agent_start": self._agent_start, "agent_end": self._agent_end,
            "call_end": self._call_end,  # a chat span is whole at its end
            "tool_start": self._tool_start, "tool_end": self._tool_end,
        }

    def routes(self) -> Routes:
        """Per event kind, the handler :meth:`__call__` would pick, for
        ``bus.subscribe(builder, kinds=builder.routes())``: the bus calls it directly
        (``call_start`` and the kinds that make no span are not delivered at all;
        ``admit``, which is a span event or nothing, still goes through the builder)."""
        routes: dict[str, Callable[[Event], None] | None] = dict.fromkeys(KINDS)
        routes.update(self._handlers)
        routes.update(dict.fromkeys(_SPAN_EVENTS, self._span_event))
        routes.pop("admit", None)
        return routes

    def __call__(self, event: Event) -> None:
        handler = self._handlers.get(event.kind)
        if handler is not None:
            handler(event)
        elif event.kind in _SPAN_EVENTS or (event.kind == "admit" and _num(
                event.data, "waited_s") >= _QUEUED_S):
            self._span_event(event)

    # -- time and lookup -----------------------------------------------------------------

    def _ns(self, event: Event) -> int:
        at_ns = int(event.at * 1e9)
        if self._offset_ns is None:
            self._offset_ns = time.time_ns() - at_ns
        return self._offset_ns + at_ns

    def _parent(self, run_id: str, step: str, agent: str = "", *,
                agents: bool = True) -> Span | None:
        """The innermost open span enclosing ``step`` of ``run_id``: the agent's span,
        an agent or step span of the step, then of each enclosing step ("a/0" is inside
        "a"; a context summary "a/summary/2" inside "a"), then the run's span."""
        exact = self._agents.get((run_id, step, agent)) if agents and agent else None
        if exact is not None:
            return exact
        probe = step
        while probe:
            key = (run_id, probe)
            found = (self._agent_of_step.get(key) if agents else None) or self._steps.get(key)
            if found is not None:
                return found
            probe = probe.rpartition("/")[0]
        return self._runs.get(run_id)

    def _start(self, name: str, event: Event, parent: Span | None,
               attributes: Mapping[str, Any], *, start_ns: int | None = None) -> Span:
        context = self._in_context(parent) if parent is not None else None
        return self.tracer.start_span(
            name, context=context, attributes=attributes,
            start_time=self._ns(event) if start_ns is None else start_ns)

    def _end(self, span: Span | _Leaf | None, event: Event, attributes: Mapping[str, Any],
             error: str = "", error_type: str = "") -> None:
        if span is None:
            return  # its start was not seen (tracing turned on mid-run)
        attrs = {k: v for k, v in attributes.items() if v is not None}
        kind = (error_type or error.partition(":")[0]) if error or error_type else ""
        if kind:
            attrs[A.ERROR_TYPE] = kind
        if isinstance(span, _Leaf):
            leaf = span
            attrs = {**leaf.attributes, **attrs}
            writer = self._writer
            if writer is not None and writer.write(
                    leaf.name, leaf.parent, leaf.start_ns, self._ns(event), attributes=attrs,
                    events=leaf.events, error=(error or kind) if kind else ""):
                return
            span = self._start(leaf.name, event, leaf.parent, attrs, start_ns=leaf.start_ns)
            for name, event_attrs, at in leaf.events:
                span.add_event(name, attributes=event_attrs, timestamp=at)
        else:
            span.set_attributes(attrs)
        if kind:
            status, code = self._error
            span.set_status(status(code, error or kind))
        span.end(end_time=self._ns(event))

    # -- runs, steps, agents -------------------------------------------------------------

    def _run_start(self, e: Event) -> None:
        run_id, flow = _str(e.data, "run_id"), _str(e.data, "flow")
        self._runs[run_id] = self._start(f"run {flow}", e, None, {
            "shoal.run_id": run_id, "shoal.flow": flow})

    def _run_end(self, e: Event) -> None:
        d = e.data
        self._end(self._runs.pop(_str(d, "run_id"), None), e, {
            "shoal.status": d.get("status"), "shoal.cost_usd": d.get("cost_usd"),
            **A.token_attrs(d, A.TOKENS_SHOAL)}, error=_str(d, "error"))

    def _step_start(self, e: Event) -> None:
        d = e.data
        run_id, step = _str(d, "run_id"), _str(d, "step")
        parent = self._parent(run_id, step, agents=False)
        self._steps[(run_id, step)] = self._start(f"step {step}", e, parent, {
            "shoal.run_id": run_id, "shoal.step": step, "shoal.agent": _str(d, "agent")})

    def _step_end(self, e: Event) -> None:
        d = e.data
        status = _str(d, "status")
        self._end(self._steps.pop((_str(d, "run_id"), _str(d, "step")), None), e, {
            "shoal.status": status, "shoal.cost_usd": d.get("cost_usd"),
            **A.token_attrs(d, A.TOKENS_SHOAL)},
            error=_str(d, "error") if status in ("failed", "fallback", "cancelled") else "")

    def _agent_start(self, e: Event) -> None:
        d = e.data
        run_id, step, agent = _str(d, "run_id"), _str(d, "step"), _str(d, "agent")
        parent = self._parent(run_id, step)
        span = self._start(f"invoke_agent {agent}", e, parent, {
            A.OPERATION: "invoke_agent", A.AGENT_NAME: agent, A.REQUEST_MODEL: e.model,
            "shoal.run_id": run_id, "shoal.step": step})
        self._agents[(run_id, step, agent)] = self._agent_of_step[(run_id, step)] = span

    def _agent_end(self, e: Event) -> None:
        d = e.data
        run_id, step = _str(d, "run_id"), _str(d, "step")
        span = self._agents.pop((run_id, step, _str(d, "agent")), None)
        if span is not None and self._agent_of_step.get((run_id, step)) is span:
            del self._agent_of_step[(run_id, step)]
        self._end(span, e, {
            "shoal.turns": d.get("turns"), "shoal.status": d.get("status"),
            "shoal.cost_usd": d.get("cost_usd"), **A.token_attrs(d, A.TOKENS_SHOAL)},
            error=_str(d, "error"))

    # -- model calls and tools -----------------------------------------------------------

    def _call_leaf(self, e: Event, start_ns: int) -> _Leaf:
        """A chat span for ``e``'s call, parented by the event's scope; its name, model,
        turn and stream flag are ``call_end``'s to write."""
        d = e.data
        return _Leaf("chat", start_ns, self._parent(_str(d, "run_id"), _str(d, "step"),
                                                    _str(d, "agent")),
                     {A.OPERATION: "chat", "shoal.call_id": _str(d, "call_id")})

    def _call_end(self, e: Event) -> None:
        """The chat span, whole (the hot path of tracing: one model call, one span). What
        every call of one kind shares (name, model, provider, channel, ...) is a template
        made once; most calls had no span event, so no :class:`_Leaf` was made for them.
        A call_end of shoal's own (every field there, of its type) is read a tuple at a
        time; any other takes :meth:`_any_call_end`."""
        d = e.data
        try:
            kind = _CHAT_KIND(d)
            call_id, attempts, queue_s, cost, tokens_in, tokens_out, duration = _CHAT_COMMON(d)
        except KeyError:
            self._any_call_end(e)
            return
        if (type(call_id) is not str or type(tokens_in) is not int
                or type(tokens_out) is not int or type(duration) is not float
                or attempts is None or queue_s is None or cost is None):
            self._any_call_end(e)
            return
        offset = self._offset_ns
        at_ns = int(e.at * 1e9)
        if offset is None:
            offset = self._offset_ns = time.time_ns() - at_ns
        end_ns = offset + at_ns
        key = (kind[0], e.model, kind[1], kind[2], kind[3], e.channel, kind[4])
        chat = self._chats.get(key)
        if chat is None:
            chat = self._chat_kind(key)
        attrs = chat[1].copy()
        attrs["shoal.call_id"] = call_id
        attrs["shoal.attempts"] = attempts
        attrs["shoal.queue_s"] = queue_s
        attrs["shoal.cost_usd"] = cost
        attrs["gen_ai.usage.input_tokens"] = tokens_in
        attrs["gen_ai.usage.output_tokens"] = tokens_out
        # the rest of A.CHAT_END and A.TOKENS_GEN_AI: written when there (waste, cache
        # and reasoning tokens only when not 0); tests/unit/test_observe_traces_attrs.py
        turn, ttft, wasted, cached, written, reasoning = _CHAT_OPTIONAL(d)
        if isinstance(turn, int):
            attrs["shoal.turn"] = turn
        if ttft is not None:
            attrs["shoal.ttft_s"] = ttft
        if wasted:
            attrs["shoal.wasted_cost_usd"] = wasted
        if cached and isinstance(cached, int):
            attrs["gen_ai.usage.cache_read.input_tokens"] = cached
        if written and isinstance(written, int):
            attrs["gen_ai.usage.cache_creation.input_tokens"] = written
        if reasoning and isinstance(reasoning, int):
            attrs["gen_ai.usage.reasoning.output_tokens"] = reasoning
        writer = self._writer
        if (writer is not None and not self.capture_content and not self._calls
                and not (self._runs or self._steps or self._agents)
                and writer.write(chat[0], None, end_ns - int(duration * 1e9), end_ns,
                                 attributes=attrs, error=chat[2])):
            return  # no parent, no span event: the one-call span, straight to the queue
        self._chat_span(e, chat, attrs, end_ns - int(duration * 1e9), end_ns, call_id=call_id)

    def _chat_kind(self, key: tuple[Any, ...]) -> tuple[str, dict[str, Any], str]:
        chat = A.chat_kind(key)
        if len(self._chats) < _MAX_KINDS:
            self._chats[key] = chat
        return chat

    def _any_call_end(self, e: Event) -> None:
        """The chat span of any call_end event, each field read and checked by itself
        (what :meth:`_call_end` does for shoal's own)."""
        d = e.data
        get = d.get
        offset = self._offset_ns
        at_ns = int(e.at * 1e9)
        if offset is None:
            offset = self._offset_ns = time.time_ns() - at_ns
        end_ns = offset + at_ns
        duration = get("duration_s")
        start_ns = end_ns - int((duration if isinstance(duration, int | float) else 0.0) * 1e9)
        key = (get("request_model"), e.model, get("stream"), get("provider"),
               get("served_model"), e.channel, get("error_type"))
        chat = self._chats.get(key)
        if chat is None:
            chat = self._chat_kind(key)
        attrs = chat[1].copy()
        call_id = get("call_id")
        if not isinstance(call_id, str):
            call_id = ""
        attrs["shoal.call_id"] = call_id
        turn = get("turn")
        if isinstance(turn, int):
            attrs["shoal.turn"] = turn
        for key_, attr in A.CHAT_END.items():
            if key_ in ("provider", "served_model"):
                continue  # the template's
            value = get(key_)
            if value is not None and (value or key_ != "wasted_cost_usd"):
                attrs[attr] = value
        attrs.update(A.token_attrs(d, A.TOKENS_GEN_AI))
        self._chat_span(e, chat, attrs, start_ns, end_ns, call_id=call_id)

    def _chat_span(self, e: Event, chat: tuple[str, dict[str, Any], str],
                   attrs: dict[str, Any], start_ns: int, end_ns: int, *, call_id: str) -> None:
        name, _, error = chat
        d = e.data
        if self.capture_content:
            note = current().call  # the call's scope is current while call_end is emitted
            if note is not None and note.call_id == call_id:
                attrs[A.CONTENT_INPUT] = A.input_messages(note.request)
                if note.response is not None:
                    attrs[A.CONTENT_OUTPUT] = A.output_messages(note.response)
        leaf = self._calls.pop(call_id, None) if self._calls else None
        if leaf is not None:  # span events were recorded on it during the call
            parent, events = leaf.parent, leaf.events
        else:
            parent = (self._parent(_str(d, "run_id"), _str(d, "step"), _str(d, "agent"))
                      if self._runs or self._steps or self._agents else None)
            events = []
        writer = self._writer
        if writer is not None and writer.write(name, parent, start_ns, end_ns,
                                               attributes=attrs, events=events, error=error):
            return
        span = self._start(name, e, parent, attrs, start_ns=start_ns)
        for event_name, event_attrs, at in events:
            span.add_event(event_name, attributes=event_attrs, timestamp=at)
        if error:
            status, code = self._error
            span.set_status(status(code, error))
        span.end(end_time=end_ns)

    def _tool_start(self, e: Event) -> None:
        d = e.data
        run_id, step, agent = _str(d, "run_id"), _str(d, "step"), _str(d, "agent")
        tool, call_id = _str(d, "tool"), _str(d, "call_id")
        self._tools[(run_id, step, agent, call_id)] = _Leaf(
            f"execute_tool {tool}", self._ns(e), self._parent(run_id, step, agent), {
                A.OPERATION: "execute_tool", A.TOOL_NAME: tool, A.TOOL_CALL_ID: call_id,
                A.TOOL_TYPE: "function"})

    def _tool_end(self, e: Event) -> None:
        d = e.data
        key = (_str(d, "run_id"), _str(d, "step"), _str(d, "agent"), _str(d, "call_id"))
        error = _str(d, "error")
        self._end(self._tools.pop(key, None), e, {"shoal.status": d.get("status")},
                  error=error, error_type=error.partition(":")[0] if error else "")

    def _span_event(self, e: Event) -> None:
        d = e.data
        call_id = _str(d, "call_id")
        span: Span | _Leaf | None = self._calls.get(call_id) if call_id else None
        if span is None and call_id:  # the call's chat span, made now (start: at its end)
            span = self._calls[call_id] = self._call_leaf(e, 0)
        if span is None:
            span = self._parent(_str(d, "run_id"), _str(d, "step"), _str(d, "agent"))
        if span is None:
            return
        attrs = {f"shoal.{k}": _attr(v) for k, v in d.items()
                 if v is not None and k not in ("run_id", "step", "agent", "call_id")}
        if e.channel:
            attrs["shoal.channel"] = e.channel
        name = "limiter_wait" if e.kind == "admit" else e.kind
        span.add_event(name, attributes=attrs, timestamp=self._ns(e))


def _str(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _num(data: Mapping[str, object], key: str) -> float:
    value = data.get(key)
    return float(value) if isinstance(value, int | float) else 0.0
