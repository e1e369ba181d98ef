"""The Runner: an agent's turn loop, model → tool calls → tool results → model → ... → output.

Per turn: trim the context if it outgrew its budget, reserve the call's estimate in
the budget (refusing the call if it would overspend), call the model (falling back
to the agent's fallback models), record the turn, then either run the tool calls
(concurrently) and loop, or validate the final output (re-asking with the
validation error), run the output guardrails and return a :class:`RunResult`.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from shoal.agents.agent import Agent
from shoal.agents.client import ModelClient, default_model_of
from shoal.agents.context import trim_messages
from shoal.agents.endings import unusable
from shoal.agents.guards import (
    Budget,
    LoopDetector,
    Reservation,
    estimate_cost,
    may_write_1h,
)
from shoal.agents.output import OutputParseError
from shoal.agents.recorder import NullRecorder, RunRecorder, agent_scope
from shoal.agents.result import RunResult, TurnTrace
from shoal.agents.run_context import RunContext
from shoal.agents.tools import ToolOutcome
from shoal.clock import Clock, RealClock
from shoal.config import ChannelConfig, Config, ModelInfo
from shoal.errors import (
    BadRequest,
    BudgetExceeded,
    CircuitOpen,
    ContextOverflow,
    DeadlineExceeded,
    LoopDetected,
    ModelRetired,
    OutputInvalid,
    ProviderError,
    RunError,
)
from shoal.observe import emit
from shoal.observe.context import enter, leave
from shoal.observe.events import JOURNAL, EventBus
from shoal.types import ChatRequest, ChatResponse, Message, ToolCall

__all__ = ["RunResult", "Runner", "TurnTrace", "new_run_id"]

T = TypeVar("T")

DEFAULT_MAX_TOKENS = 4096
DEFAULT_TOOL_RESULT_CHARS = 20_000
SUMMARIZE_INSTRUCTIONS = (
    "Summarise this conversation excerpt in a few sentences, keeping facts, decisions, "
    "tool results and open questions. Plain text only."
)
# A retired model (the provider answers 404 from its day) moves the agent on as well.
_FALLBACK_ON = (ProviderError, CircuitOpen, DeadlineExceeded, ModelRetired)


def _channels(client: ModelClient, info: ModelInfo) -> list[ChannelConfig]:
    """The channels that may serve ``info`` when the client is a Router (their cache
    settings decide whether a call may write 1-hour cache entries); none otherwise."""
    config = getattr(client, "config", None)
    if not isinstance(config, Config):
        return []
    return [config.channels[c] for c in info.channels if c in config.channels]


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


class Runner:
    """Runs agents against a :class:`ModelClient` (normally the Router).

    Args:
        client: the model call path.
        clock: time for latencies and tool timeouts (virtual in tests).
        recorder: journaling hook; turns are recorded and replayed through it.
        default_model: for agents with ``model=None`` (else the client's config default).
        default_max_tokens: ``max_tokens`` for agents that set none (bounded by the
            model's ``max_output``); it is also what a budget reserves for the output.
        tool_result_chars: tool results longer than this are truncated.
        events: where agent, tool, guard, budget and journal events go (default: the
            client's bus, ``client.events``, so one subscription also sees its calls).
    """

    def __init__(
        self,
        client: ModelClient,
        *,
        clock: Clock | None = None,
        recorder: RunRecorder | None = None,
        default_model: str | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        tool_result_chars: int | None = DEFAULT_TOOL_RESULT_CHARS,
        events: EventBus | None = None,
    ) -> None:
        self.client = client
        self.clock: Clock = clock or RealClock()
        self.recorder: RunRecorder = recorder or NullRecorder()
        self.default_model = default_model
        self.default_max_tokens = default_max_tokens
        self.tool_result_chars = tool_result_chars
        self.events = events if events is not None else emit.bus_of(client)

    def model_for(self, agent: Agent[Any]) -> str:
        """The model an agent runs on (its own, the runner's default, or the config's)."""
        if agent.model:
            return agent.model
        if self.default_model is None:
            self.default_model = default_model_of(self.client)
        return self.default_model

    async def run(
        self,
        agent: Agent[T],
        input: str | Sequence[Message],
        *,
        deps: Any = None,
        budget: Budget | None = None,
        run_id: str | None = None,
        step_id: str | None = None,
    ) -> RunResult[T]:
        """Run ``agent`` on ``input`` until it produces its final output.

        Raises ``BudgetExceeded`` (turns, tokens, dollars), ``LoopDetected``,
        ``OutputInvalid``, ``ModelRefused``, ``GuardrailTripped``, ``ContextOverflow`` or
        a provider error once the router and every fallback model gave up.
        """
        model = self.model_for(agent)
        if agent.budget_usd is not None or agent.budget_tokens is not None:
            name = f"agent {agent.name!r}"
            budget = (
                budget.child(max_usd=agent.budget_usd, max_tokens=agent.budget_tokens, name=name)
                if budget is not None
                else Budget(max_usd=agent.budget_usd, max_tokens=agent.budget_tokens, name=name)
            )
        ctx = RunContext(
            run_id=run_id or new_run_id(), step_id=step_id or agent.name, agent=agent.name,
            runner=self, deps=deps, budget=budget,
        )
        loop = _Loop(self, agent, ctx, model)
        try:  # a journal executes an agent run without a flow under its lease
            async with agent_scope(self.recorder, ctx.run_id):
                if emit.live(self.events):
                    assert self.events is not None
                    return await emit.observed_agent(self.events, self.clock, ctx, model,
                                                     loop.run(input), turns=loop.turns)
                return await loop.run(input)
        except RunError as exc:  # what this run spent, for the step that reports it
            exc.spent_usage, exc.spent_cost_usd = ctx.usage, ctx.cost_usd
            raise


class _Loop(Generic[T]):
    """The state of one agent run (kept off the Runner so runs share nothing)."""

    def __init__(self, runner: Runner, agent: Agent[T], ctx: RunContext, model: str) -> None:
        self.r = runner
        self.agent = agent
        self.ctx = ctx
        self.model = model
        self.info: dict[str, ModelInfo] = {}
        self.turns: list[TurnTrace] = []
        self.messages: list[Message] = []
        self.tool_specs = [t.spec() for t in agent.tools]
        self.detector = LoopDetector(agent.loop)
        # Tag requests with the step (sent as x-shoal-tag) unless the agent set a tag;
        # the agent's name is its prompt-cache key (OpenAI prompt_cache_key): every run
        # of it shares instructions and tools, so a fan-out lands on one cache.
        self.metadata = {"cache_key": agent.name, "tag": ctx.step_id, **agent.metadata}

    def model_info(self, model: str) -> ModelInfo:
        info = self.info.get(model)
        if info is None:
            info = self.info[model] = self.r.client.model_info(model)
        return info

    async def run(self, input: str | Sequence[Message]) -> RunResult[T]:
        agent, ctx, clock = self.agent, self.ctx, self.r.clock
        started = clock.now()
        self.messages = await self._initial_messages(input)
        tool_choice = agent.tool_choice
        # Set once the model answered in text but not valid output: it is done with its
        # tools, so the re-ask sends tool_choice "none" ("answer now"; where the output is
        # an offered tool, Anthropic, the adapter forces that tool). Until then the model
        # is free to call its tools first, on every provider.
        answer_now = False
        reasks = 0
        turn = 0
        while True:
            if turn >= agent.max_turns:
                emit.guard(self.r.events, "max_turns", "trip", f"{agent.max_turns} turns")
                raise BudgetExceeded(
                    f"agent {agent.name!r} reached max_turns={agent.max_turns} without a final "
                    "answer; raise max_turns or simplify the task"
                )
            ctx.turn = turn
            response = await self._turn(turn, "none" if answer_now else tool_choice)
            turn += 1
            stop = unusable(agent.name, response)  # a cut call, a pause, a refusal
            if stop is not None:
                raise stop
            self.messages.append(response.message())
            if response.tool_calls:
                if tool_choice == "none":
                    raise LoopDetected(
                        f"agent {agent.name!r} kept calling tools after being told to stop "
                        "and answer (loop nudge ignored)"
                    )
                loop = self.detector.observe(response)
                if loop is not None:
                    if agent.loop.on_loop == "raise" or self.detector.nudged:
                        emit.guard(self.r.events, "loop", "trip", loop)
                        raise LoopDetected(f"agent {agent.name!r} is looping: {loop}")
                    emit.guard(self.r.events, "loop", "nudge", loop)
                    self.detector.nudged = True
                    tool_choice = "none"
                    self.turns[-1].note = f"loop: {loop}; nudged to stop"
                    for call in response.tool_calls:
                        self.messages.append(
                            Message.tool(call.id, "Not executed: loop detected.", name=call.name,
                                         is_error=True)
                        )
                    self.messages.append(Message.user(agent.loop.nudge.format(what=loop)))
                    continue
                await self._run_tools(response.tool_calls)
                continue
            try:
                output = agent.output.parse(response.text)
            except OutputParseError as exc:
                if reasks >= agent.output_retries:
                    raise OutputInvalid(
                        f"agent {agent.name!r}: output still invalid after {reasks} re-ask(s): "
                        f"{exc}; the last answer began {response.text[:200]!r}"
                    ) from None
                reasks += 1
                answer_now = bool(self.tool_specs)
                self.turns[-1].note = f"output invalid, re-asked: {exc}"
                self.messages.append(agent.output.reask(exc))
                continue
            for guard in agent.output_guardrails:
                output = await emit.guarded(self.r.events, guard, output, ctx, "output")
            return RunResult(
                agent=agent.name, output=output, text=response.text, messages=self.messages,
                usage=ctx.usage, cost_usd=ctx.cost_usd, turns=self.turns,
                model=response.model or self.model, run_id=ctx.run_id, step_id=ctx.step_id,
                latency_s=clock.now() - started,
            )

    async def _initial_messages(self, input: str | Sequence[Message]) -> list[Message]:
        agent, ctx = self.agent, self.ctx
        if isinstance(input, str):
            history: list[Message] = [Message.user(input)]
        else:
            history = list(input)
        if agent.input_guardrails:
            idx = next((i for i in range(len(history) - 1, -1, -1)
                        if history[i].role == "user"), None)
            if idx is not None:
                value: Any = history[idx].content
                for guard in agent.input_guardrails:
                    value = await emit.guarded(self.r.events, guard, value, ctx, "input")
                history[idx] = Message.user(value if isinstance(value, str) else str(value))
        instructions = agent.instructions
        if callable(instructions):
            produced = instructions(ctx)
            text = await produced if inspect.isawaitable(produced) else produced
        else:
            text = instructions
        schema_note = agent.output.instructions()
        system = "\n\n".join(p for p in (text, schema_note) if p)
        if system and not (history and history[0].role == "system"):
            history.insert(0, Message.system(system))
        return history

    def _request(self, model: str, tool_choice: str | None) -> ChatRequest:
        agent = self.agent
        info = self.model_info(model)
        max_tokens = agent.max_tokens or min(self.r.default_max_tokens, info.max_output)
        return ChatRequest(
            model=model, messages=self.messages, tools=self.tool_specs,
            tool_choice=tool_choice if self.tool_specs else None,
            output_schema=agent.output.schema, output_schema_name=agent.output.name,
            temperature=agent.temperature, top_p=agent.top_p, max_tokens=max_tokens,
            stop=agent.stop, seed=agent.seed, metadata=self.metadata,
            thinking=agent.thinking, extra=agent.extra,
        )

    async def _fit_context(self, request: ChatRequest) -> None:
        policy = self.agent.context
        if policy is None:
            return
        info = self.model_info(request.model)
        limit = info.context_window
        if policy.max_prompt_tokens is not None:
            limit = min(limit, policy.max_prompt_tokens + (request.max_tokens or 0))
        client = self.r.client

        def estimate(msgs: list[Message]) -> int:
            request.messages = msgs
            return client.estimate_tokens(request)

        summarize = self._summarize if policy.summarize else None
        trimmed = await trim_messages(
            self.messages, estimate=estimate, limit=limit, policy=policy, summarize=summarize
        )
        self.messages = trimmed
        request.messages = trimmed

    async def _summarize(self, dropped: list[Message]) -> str:
        policy = self.agent.context
        assert policy is not None
        model = policy.summary_model or self.model
        info = self.model_info(model)
        # The summary call must fit the window too: a bounded answer, a bounded transcript
        # (~3 characters per token is a conservative reading of every tokenizer we ship).
        max_tokens = max(16, min(policy.summary_max_tokens, info.max_output,
                                 info.context_window // 4))
        transcript_chars = max(200, (info.context_window - max_tokens - 100) * 3)
        summarizer: Agent[str] = Agent(
            "context-summarizer",
            model=model,
            instructions=SUMMARIZE_INSTRUCTIONS,
            max_tokens=max_tokens,
            context=None,
        )
        transcript = "\n".join(
            f"{m.role}: {m.content[:2000]}"
            + (f" [calls: {', '.join(c.name for c in m.tool_calls)}]" if m.tool_calls else "")
            for m in dropped
        )
        if len(transcript) > transcript_chars:
            transcript = "…" + transcript[-transcript_chars:]
        result = await self.r.run(
            summarizer, transcript, deps=self.ctx.deps, budget=self.ctx.budget,
            run_id=self.ctx.run_id, step_id=f"{self.ctx.step_id}/summary/{self.ctx.turn}",
        )
        self.ctx.usage = self.ctx.usage + result.usage
        self.ctx.cost_usd += result.cost_usd
        return result.output

    async def _turn(self, turn: int, tool_choice: str | None) -> ChatResponse:
        ctx, r = self.ctx, self.r
        replayed = await r.recorder.replay_turn(ctx.run_id, ctx.step_id, turn)
        note = ""
        if replayed is not None:
            response = replayed
            if ctx.budget is not None:
                ctx.budget.charge(response.usage.total_tokens, response.cost_usd)
        else:
            request = self._request(self.model, tool_choice)
            await self._fit_context(request)
            started = r.clock.now()
            token = enter(turn=turn) if emit.live(r.events) else None  # call events say it
            try:
                response, note = await self._call(request, turn)
            finally:
                if token is not None:
                    leave(token)
            if not response.latency_s:
                response.latency_s = r.clock.now() - started
            await r.recorder.turn_done(ctx.run_id, ctx.step_id, turn, response)
            if emit.live(r.events) and not isinstance(r.recorder, NullRecorder):
                assert r.events is not None
                r.events.emit(JOURNAL, what="turn", turn=turn)
        ctx.usage = ctx.usage + response.usage
        ctx.cost_usd += response.cost_usd
        self.turns.append(
            TurnTrace(
                turn=turn, model=response.model, provider=response.provider,
                channel=response.channel, started_at=r.clock.now() - response.latency_s,
                latency_s=response.latency_s, usage=response.usage, cost_usd=response.cost_usd,
                finish_reason=response.finish_reason,
                tool_calls=[c.name for c in response.tool_calls], replayed=replayed is not None,
                note=note,
            )
        )
        return response

    async def _call(self, request: ChatRequest, turn: int) -> tuple[ChatResponse, str]:
        agent, budget, client = self.agent, self.ctx.budget, self.r.client
        models = (request.model, *agent.fallbacks)
        notes: list[str] = []
        for i, model in enumerate(models):
            if i:
                request = self._request(model, request.tool_choice)
                await self._fit_context(request)
            reservation = None
            if budget is not None:
                estimate = client.estimate_tokens(request)
                info = self.model_info(model)
                usd = estimate_cost(info, estimate, request.max_tokens,
                                    one_hour_cache=may_write_1h(request, info,
                                                                _channels(client, info)))
                try:
                    reservation = budget.reserve(
                        estimate, usd, what=f"agent {agent.name!r} turn {turn} on {model}")
                except BudgetExceeded:
                    emit.budget(self.r.events, "refuse", usd, estimate)
                    raise
                emit.budget(self.r.events, "reserve", usd, estimate)
            try:
                response = await client.complete(request, deadline_s=agent.call_deadline_s)
            except _FALLBACK_ON as exc:
                self._charge_waste(reservation, exc)
                plain_bad_request = isinstance(exc, BadRequest) and not isinstance(
                    exc, ContextOverflow
                )
                if plain_bad_request or i + 1 == len(models):
                    raise
                notes.append(f"{model} failed ({type(exc).__name__}), fell back")
                emit.fallback(self.r.events, model, models[i + 1], exc)
                continue
            except BaseException as exc:
                self._charge_waste(reservation, exc)
                raise
            if reservation is not None:
                # Spend is what the provider billed: answers discarded on the way count.
                wasted = response.wasted.total_tokens if response.wasted is not None else 0
                reservation.settle(response.usage.total_tokens + wasted,
                                   response.cost_usd + response.wasted_cost_usd)
                emit.budget(self.r.events, "settle", response.cost_usd + response.wasted_cost_usd,
                             response.usage.total_tokens + wasted)
            self.ctx.cost_usd += response.wasted_cost_usd
            return response, "; ".join(notes)
        raise AssertionError("unreachable: models is never empty")

    def _charge_waste(self, reservation: Reservation | None, exc: BaseException) -> None:
        """A failed call bills nothing but the discarded answers it carried (cut streams,
        malformed bodies): charge those, release the rest of the reservation."""
        usage = exc.wasted_usage if isinstance(exc, RunError) else None
        usd = exc.wasted_cost_usd if isinstance(exc, RunError) else 0.0
        tokens = usage.total_tokens if usage is not None else 0
        if reservation is not None:
            reservation.settle(tokens, usd)
            emit.budget(self.r.events, "settle", usd, tokens)
        self.ctx.cost_usd += usd

    async def _run_tools(self, calls: Sequence[ToolCall]) -> None:
        if len(calls) == 1:
            outcomes = [await self._run_tool(calls[0])]
        else:
            outcomes = list(await asyncio.gather(*(self._run_tool(c) for c in calls)))
        trace = self.turns[-1]
        for call, outcome in zip(calls, outcomes, strict=True):
            if outcome.is_error:
                trace.tool_errors.append(f"{call.name}: {outcome.kind}")
            self.messages.append(
                Message.tool(call.id, outcome.content, name=call.name, is_error=outcome.is_error)
            )

    async def _run_tool(self, call: ToolCall) -> ToolOutcome:
        bus = self.r.events
        if bus is not None and bus.active:
            return await emit.observed_tool(bus, self.r.clock, call.name, call.id,
                                            self._tool_outcome(call))
        return await self._tool_outcome(call)

    async def _tool_outcome(self, call: ToolCall) -> ToolOutcome:
        tool = self.agent.tool_map.get(call.name)
        if tool is None:
            available = ", ".join(self.agent.tool_map) or "(none)"
            return ToolOutcome(
                f"Error: there is no tool named {call.name!r}. Available tools: {available}.",
                is_error=True,
                kind="unknown_tool",
            )
        return await tool.invoke(
            call.arguments, self.ctx, clock=self.r.clock, max_result_chars=self.r.tool_result_chars
        )
