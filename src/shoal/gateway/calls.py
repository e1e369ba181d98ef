"""The gateway's core, below HTTP: one caller's call from key to Router to settlement.

Per call: authenticate the presented key → resolve the model (404 when the config has
none such) → the key may use it → validate the request (shoal.validate, the model's
window included) → admit it against the key with its worst case (estimated prompt +
output bound tokens; their price on the dearest model of the fallback chain) → the
Router call → settle what was really spent, in a finally, also when the call failed or
the client went away. Settlements run as tracked tasks: a cancelled handler cannot
lose one, and shutdown waits for all of them.

Routing policy (channels, limits, breakers, retries, failover, fallbacks) is entirely
the Router's; the gateway adds none.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from shoal.errors import ConfigError, RunError
from shoal.gateway.errors import BadInput, Failure
from shoal.gateway.keys_api import KeyModelDenied
from shoal.gateway.metrics import GatewayMetrics
from shoal.providers.caching import estimate_cost, may_write_1h
from shoal.providers.profiles import profile_for
from shoal.secrets import redact
from shoal.tokens import (
    count_text,
    default_output_tokens,
    estimate_prompt_tokens,
    prompt_token_bound,
)
from shoal.types import ChatRequest, ChatResponse, StreamEvent, Usage
from shoal.validate import validate_request

if TYPE_CHECKING:
    from aiohttp import web

    from shoal.config import ChannelConfig, ModelInfo
    from shoal.gateway.keys_api import KeyGrant, KeyService, VirtualKey
    from shoal.gateway.settings import GatewaySettings
    from shoal.gateway.translate_common import Parsed
    from shoal.traffic.router import Router

__all__ = ["Admitted", "Encoder", "Gateway", "Spend", "Wire", "presented_key"]

log = logging.getLogger("shoal.gateway")
_BIG_PROMPT_CHARS = 100_000


class Encoder(Protocol):
    """One stream's bytes in a protocol (:mod:`openai_api`, :mod:`anthropic_api`)."""

    def start(self) -> bytes: ...
    def feed(self, event: StreamEvent) -> bytes: ...
    def end(self, response: ChatResponse) -> bytes: ...
    def fail(self, failure: Failure) -> bytes: ...


class Wire(Protocol):
    """A protocol's chat endpoint: parse a request, render answers, streams and errors."""

    name: str
    route: str

    def parse(self, body: Any) -> Parsed: ...
    def render(self, response: ChatResponse, model: str) -> bytes: ...
    def stream(self, model: str, prompt_tokens: Callable[[], int],
               include_usage: bool) -> Encoder: ...
    def error_body(self, failure: Failure) -> bytes: ...
    def error_status(self, failure: Failure) -> int: ...


def presented_key(request: web.Request) -> str | None:
    """``Authorization: Bearer <key>`` (OpenAI) or ``x-api-key`` (Anthropic), either
    on both endpoints."""
    auth = request.headers.get("Authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


@dataclass(slots=True)
class Admitted:
    """A call that passed its key's checks and holds a grant to settle."""

    key: VirtualKey
    info: ModelInfo
    grant: KeyGrant
    request: ChatRequest
    counted: int | None = None  # the prompt's estimate, once something needed it

    def prompt_tokens(self) -> int:
        """The prompt's estimate (counted on first need: a keyless call whose prompt
        plainly fits needs it only for an Anthropic stream's start or a cut's bill)."""
        if self.counted is None:
            self.counted = estimate_prompt_tokens(self.request, self.info.encoding)
        return self.counted


async def _count(request: ChatRequest, info: ModelInfo) -> int:
    """The prompt's estimate; a long one (~20 ms of tokenizing per 100k tokens) off the
    event loop, so the streams and calls in flight keep moving (the Router's own
    estimate, where it needs one, then hits the cache)."""
    if sum(len(m.content) for m in request.messages) > _BIG_PROMPT_CHARS:
        return await asyncio.to_thread(estimate_prompt_tokens, request, info.encoding)
    return estimate_prompt_tokens(request, info.encoding)


@dataclass(slots=True)
class Spend:
    """What a call cost, as known when it ended."""

    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0

    def answered(self, response: ChatResponse) -> None:
        wasted = response.wasted
        self.usage = response.usage if wasted is None else response.usage + wasted
        self.cost_usd = response.cost_usd + response.wasted_cost_usd

    def failed(self, exc: BaseException) -> None:
        if isinstance(exc, RunError) and exc.wasted_usage is not None:
            self.usage = exc.wasted_usage
            self.cost_usd = exc.wasted_cost_usd

    def cut(self, adm: Admitted, output: list[str]) -> None:
        """The client left: the provider bills the prompt and what it generated (what
        the caller received is the best count the gateway has)."""
        out = count_text("".join(output), adm.info.encoding) if output else 0
        prompt = adm.prompt_tokens()
        self.usage = Usage(prompt, out)
        self.cost_usd = adm.info.cost(prompt, out)


@dataclass(frozen=True, slots=True)
class _Plan:
    info: ModelInfo
    chain: tuple[ModelInfo, ...]
    channels: tuple[tuple[ChannelConfig, ...], ...]  # of each model of the chain
    protocols: frozenset[str]  # of every channel that may serve the chain
    no_logprobs: tuple[str, ...]  # the chain's channels that return no log probabilities


class Gateway:
    """The Router, the keys and the settings of one gateway process."""

    def __init__(self, router: Router, keys: KeyService, settings: GatewaySettings,
                 metrics: GatewayMetrics | None = None) -> None:
        self.router = router
        self.keys = keys
        self.settings = settings
        self.metrics = metrics or GatewayMetrics()
        self.ready = False
        self.draining = False
        self._settles: set[asyncio.Task[None]] = set()
        self._plans: dict[str, _Plan] = {}
        self.on_close: list[Callable[[], None]] = []  # run by aclose (exporters' unsubscribe)

    # -- before the call ------------------------------------------------------------------

    async def authenticate(self, request: web.Request) -> VirtualKey:
        return await self.keys.authenticate(presented_key(request))

    def model(self, name: str) -> ModelInfo:
        try:
            return self.router.model_info(name)
        except ConfigError:
            import difflib

            config = self.router.config  # suggest only what this gateway serves (keyed)
            served = {m.name.lower(): m.name for m in config.models.values()
                      if config.usable(m)}
            close = difflib.get_close_matches(name.lower(), list(served), n=4, cutoff=0.5)
            hint = f" Did you mean: {', '.join(served[c] for c in close)}?" if close else ""
            raise BadInput(f"unknown model {name!r}.{hint} GET /v1/models lists the models "
                           "this gateway serves.", param="model", status=404,
                           kind="not_found", code="model_not_found") from None

    def allowed(self, key: VirtualKey, info: ModelInfo, requested: str) -> None:
        """The key may use the model under its catalog name or the name it asked for."""
        try:
            self.keys.check_model(key, info.name)
        except KeyModelDenied:
            if requested == info.name:
                raise
            self.keys.check_model(key, requested)

    def _plan(self, info: ModelInfo) -> _Plan:
        """The model's fallback chain and its channels' protocols; kept once the model is
        servable (a model without a keyed channel is looked at again on every call, so a
        key set later is seen)."""
        plan = self._plans.get(info.name)
        if plan is not None and plan.info is info:
            return plan
        config = self.router.config
        chain = (info, *(config.model(f) for f in info.fallbacks))
        if not any(config.usable(m) for m in chain):
            raise BadInput(f"model {info.name!r} is not served by this gateway: none of its "
                           "channels has an API key. GET /v1/models lists the models it "
                           "serves.", param="model", status=404, kind="not_found",
                           code="model_not_found")
        per_model = tuple(tuple(config.channels_for(m)) for m in chain)
        channels = {ch.name: ch for chs in per_model for ch in chs}.values()
        protocols = frozenset(ch.protocol for ch in channels)
        no_logprobs = tuple(f"{ch.name} ({ch.provider})" for ch in channels  # keyed: used
                            if ch.has_key() and not profile_for(ch.provider, ch.protocol).logprobs)
        plan = self._plans[info.name] = _Plan(info, chain, per_model, protocols, no_logprobs)
        return plan

    async def admit(self, parsed: Parsed, protocol: str, key: VirtualKey,
                    info: ModelInfo | None = None) -> Admitted:
        """Check ``parsed`` against the key and reserve its worst case (nothing to
        reserve without keys: the grant asks for 0); ``info``: its model, when the caller
        looked it up already (:meth:`model`)."""
        request = parsed.request
        if info is None:
            info = self.model(request.model)
        self.allowed(key, info, request.model)
        plan = self._plan(info)
        chain = plan.chain
        if request.logprobs is not None and plan.no_logprobs:
            # Refused before any upstream request: answering without them would be a
            # silent drop (any channel of the chain may be the one that serves the call).
            raise BadInput(
                f"logprobs: model {info.name!r} may be served by channels whose provider "
                f"returns no log probabilities: {', '.join(plan.no_logprobs)}; leave "
                "logprobs and top_logprobs unset for it, or ask a model served by "
                "providers that return them (OpenAI, DeepSeek, Gemini, vLLM, llama.cpp)",
                param="logprobs", code="unsupported_parameter")
        if parsed.passthrough and plan.protocols == {protocol}:  # else another would refuse
            request.extra.update(parsed.passthrough)
        counted: int | None = None
        if self.keys.required and (key.budget_usd is not None or key.tpm is not None):
            prompt = counted = await _count(request, info)  # the key's budget or TPM needs it
        else:  # nothing to charge it against: count only if the bytes may not fit
            prompt = prompt_token_bound(request, info.encoding)  # an upper bound
            if prompt + (request.max_tokens or 0) > info.context_window:
                prompt = counted = await _count(request, info)
        validate_request(request, info, prompt_tokens=prompt)  # BadRequest: a 400
        if not self.keys.required:  # nothing reserves it: an anonymous grant is only marked
            return Admitted(key, info, await self.keys.admit(
                key, model=info.name, tokens=0, max_cost_usd=0.0), request, counted)
        worst_tokens, worst_usd = 0, 0.0
        for m, channels in zip(chain, plan.channels, strict=True):
            out = request.max_tokens or default_output_tokens(m)
            worst_tokens = max(worst_tokens, prompt + out)
            # The dearest way the prompt can be billed: fresh, or written to a cache
            # (Anthropic writes cost 1.25× input, 2× for a 1-hour entry: asked for by a
            # 1-hour cache_control, or by the model's or a channel's cache_ttl = "1h").
            worst_usd = max(worst_usd, estimate_cost(
                m, prompt + out, out, one_hour_cache=may_write_1h(request, m, channels)))
        grant = await self.keys.admit(key, model=info.name, tokens=worst_tokens,
                                      max_cost_usd=worst_usd)
        return Admitted(key, info, grant, request, counted)

    # -- after the call -------------------------------------------------------------------

    def settle(self, grant: KeyGrant, spend: Spend) -> None:
        """Settle in a tracked task: it runs to its end even when the handler that
        started it is cancelled (client gone, shutdown deadline), and the answer does
        not wait for the store. Without keys there is nothing to record (no task)."""
        if not self.keys.required:  # OpenKeys: settling only marks the grant
            grant.settled = True
            return
        # A key service that hands its settlement over (StoreKeys) has it run in this
        # task, which nothing cancels, instead of shielding it in a second task.
        handover = getattr(self.keys, "settlement", None)
        work: Awaitable[None] | None = (
            handover(grant, usage=spend.usage, cost_usd=spend.cost_usd)
            if handover is not None else
            self.keys.settle(grant, usage=spend.usage, cost_usd=spend.cost_usd))
        if work is None:  # already settled
            return
        task = asyncio.get_running_loop().create_task(self._settle(work, grant, spend))
        self._settles.add(task)
        task.add_done_callback(self._settles.discard)

    async def _settle(self, work: Awaitable[None], grant: KeyGrant, spend: Spend) -> None:
        try:
            await work
        except Exception as exc:  # the store is down: say so loudly, keep serving
            # No traceback (TRY400): it could carry the store's URL.
            log.error("could not settle key %s (%s, $%.6f): %s",  # noqa: TRY400
                      grant.key.id, grant.model, spend.cost_usd, redact(str(exc)))

    async def settled(self) -> None:
        """Wait for every settlement started so far (shutdown, tests)."""
        while self._settles:
            await asyncio.gather(*list(self._settles), return_exceptions=True)

    async def aclose(self) -> None:
        await self.settled()
        for hook in self.on_close:
            hook()
        await self.router.aclose()
        await self.keys.aclose()
