"""The simulator's request path: decide the fault, admit under the limits, answer.

One :class:`SimEngine` serves both protocols. Per request it
1. parses the body (400 in the protocol's shape when invalid);
2. picks at most one fault: the ``x-sim-fault`` header, else the next scripted one,
   else a bad key / ``auth_fail`` / ``quota_exhausted``, else one seeded random draw;
3. answers immediate faults (error statuses) at once;
4. admits the request under ``max_concurrency``, ``rpm`` and ``tpm`` (else 429);
5. rejects prompts over the model's context window (400);
6. waits the model's latency and sends the answer, streamed or whole, with the
   delivery faults (hang, cut, truncated, malformed, stream_error, the SSE dialects)
   applied (see :mod:`shoal.sim.delivery`); a ``finish:<reason>`` fault ends it short
   and a ``code:<code>`` answers the provider's error for that code
   (:mod:`shoal.sim.provider_faults`).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import random
from collections import deque
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import web

from shoal.clock import utc_date
from shoal.errors import ConfigError
from shoal.sim import anthropic_wire, openai_wire, provider_faults, styles
from shoal.sim.caching import PromptCache
from shoal.sim.config import ModelProfile, SimConfig, check_fault
from shoal.sim.content import Answer, Ask, BadInput, Wordbank, plan, refused
from shoal.sim.delivery import Call, send_stream, send_whole
from shoal.sim.limits import (
    RateWindow,
    go_duration,
    retry_after_form_headers,
    retry_headers,
    rfc3339,
)
from shoal.sim.retired_models import check_retired
from shoal.sim.stats import StatsRecorder

if TYPE_CHECKING:
    from shoal.clock import Clock

__all__ = ["SimEngine"]

_DELIVERY = frozenset({"hang", "cut", "truncated", "malformed", "stream_error", "schema_invalid",
                       "refusal", "no_done", "crlf", "data_nospace", "json_body"})
ANTHROPIC_MAX_BODY = 32 * 1024 * 1024  # bytes (docs.claude.com/en/api/errors)
_BAD_GATEWAY_HTML = (
    b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
)


class _Reply(Exception):
    """Raised inside the request path to answer at once with an error."""

    def __init__(self, kind: str, status: int, **ctx: Any) -> None:
        super().__init__(kind)
        self.kind = kind
        self.status = status
        self.ctx = ctx


def _raise(kind: str, status: int, **ctx: Any) -> NoReturn:
    raise _Reply(kind, status, **ctx)


class SimEngine:
    """Limits, faults, stats and answers; ``handle_openai``/``handle_anthropic`` are the routes."""

    def __init__(self, config: SimConfig, clock: Clock) -> None:
        self.clock = clock
        self.stats = StatsRecorder(config.log_size)
        self.script: deque[str] = deque()
        self.admitted = 0
        self.counter = 0
        self.stopping: asyncio.Event | None = None
        self.config = config
        self.prompt_cache = PromptCache()  # per API key, on this clock (sim/caching.py)
        self.apply(config)

    def apply(self, config: SimConfig, *, fresh: bool = True) -> None:
        """Adopt *config*; *fresh* rebuilds the RNGs and the rate windows."""
        old = self.config
        self.config = config
        self._table = config.faults.table()
        self._profiles: dict[str, ModelProfile] = {}
        if fresh:
            self.prompt_cache.clear()
        if fresh or config.seed != old.seed:
            self.rng = random.Random(config.seed)
            self.jitter_rng = random.Random(config.seed + 1)
            self.bank = Wordbank(config.seed)
        if fresh or (config.rpm, config.rate_window_s) != (old.rpm, old.rate_window_s):
            self.rpm = RateWindow(config.rpm, config.rate_window_s) if config.rpm else None
        if fresh or (config.tpm, config.rate_window_s) != (old.tpm, old.rate_window_s):
            self.tpm = RateWindow(config.tpm, config.rate_window_s) if config.tpm else None
            # Input and output tokens counted apart in the same window, under the same
            # limit (so never binding before the TPM): Anthropic's input-/output-tokens
            # headers report them.
            self.tpm_in = RateWindow(config.tpm, config.rate_window_s) if config.tpm else None
            self.tpm_out = RateWindow(config.tpm, config.rate_window_s) if config.tpm else None
        if self.stats.log.maxlen != config.log_size:
            self.stats.log = deque(self.stats.log, maxlen=config.log_size)

    # -- routes -----------------------------------------------------------------------------

    async def handle_openai(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(Call(request, "openai"))

    async def handle_anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(Call(request, "anthropic"))

    async def _handle(self, call: Call) -> web.StreamResponse:
        stats = self.stats
        stats.enter()
        self.counter += 1
        call.n = self.counter
        call.rid = f"req_sim_{call.n:07d}"
        start = self.clock.now()
        admitted = False
        try:
            ask = call.ask = self._parse(call, await call.request.read())
            call.fault = self._pick_fault(call)
            if call.fault is not None and call.fault.startswith(("code:", "finish:")):
                try:  # does the route's provider have that code / finish reason?
                    provider_faults.check(call.fault, self._style(call), call.protocol)
                except BadInput as exc:
                    _raise("bad_request", 400, message=exc.message)
            profile = self._profile(ask.model)
            if call.fault == "context_overflow":
                overflow = profile.context_window + 1 + ask.prompt_chars // 4
                _raise("context_overflow", 400, window=profile.context_window, prompt=overflow)
            if call.fault is not None and _is_immediate(call.fault):
                _raise_immediate(call.fault, self.config.fault_retry_after_s)
            answer = call.answer = plan(
                ask, profile, self.bank,
                schema_invalid=call.fault == "schema_invalid",
                id_prefix="call_" if call.protocol == "openai" else "toolu_",
            )  # fmt: skip
            if call.fault == "refusal":
                answer = call.answer = refused(answer)
            elif call.fault is not None and call.fault.startswith("finish:"):
                answer = call.answer = provider_faults.cut_short(answer, call.fault[7:])
            self._admit(call, answer)
            admitted = True
            self.admitted += 1
            if answer.prompt_tokens > profile.context_window:
                call.fault = "context_overflow"
                _raise("context_overflow", 400, window=profile.context_window,
                       prompt=answer.prompt_tokens)  # fmt: skip
            if ask.cache is not None:  # cached once the answer begins (first token)
                now = self.clock.now()
                got = self.prompt_cache.settle(ask.cache, _api_key(call) or "",
                                               answer.prompt_tokens, now,
                                               now + profile.first_token_s)
                answer.cache_read = got.read
                answer.cache_write_5m, answer.cache_write_1h = got.write_5m, got.write_1h
            return await self._deliver(call, profile)
        except _Reply as reply:
            response = self._error(call, reply)
            call.status = response.status
            return response
        finally:
            if admitted:
                self.admitted -= 1
            stats.leave(call.record(start, self.clock.now()))

    def _parse(self, call: Call, raw: bytes) -> Ask:
        if call.protocol == "anthropic" and len(raw) > ANTHROPIC_MAX_BODY and \
                self._style(call) != "permissive":
            _raise("too_large", 413)  # Anthropic: 413 request_too_large over 32 MB
        try:
            body = json.loads(raw)
        except ValueError:
            _raise("bad_request", 400, message="The request body is not valid JSON.")
        try:
            styles.check_route(call.request, call.protocol, self.config.style)
            style = self._style(call)
            if call.protocol == "openai":
                ask = openai_wire.parse(body, style)
            else:
                ask = anthropic_wire.parse(body, style)
            check_retired(ask.model, style, self._today())
        except BadInput as exc:  # a provider style's refusal carries its status and code
            _raise("bad_request", exc.status, message=exc.message, param=exc.param,
                   code=exc.code, **exc.extra)  # fmt: skip
        return ask

    def _today(self) -> datetime.date:
        """The day retirements are judged on: ``SimConfig.today``, else the clock's UTC date."""
        if self.config.today is not None:
            return datetime.date.fromisoformat(self.config.today)
        return utc_date(self.clock)

    def _style(self, call: Call) -> str:
        """The provider style of *call*: its ``/style/<name>`` URL prefix, else the config's."""
        return styles.style_of(call.request, self.config.style)

    # -- decisions --------------------------------------------------------------------------

    def _pick_fault(self, call: Call) -> str | None:
        drawn: str | None = None
        if self._table:
            # One draw per request, always, so the k-th request's fault depends only on k.
            u = self.rng.random()
            for name, rate in self._table:
                if u < rate:
                    drawn = name
                    break
                u -= rate
            if drawn == "529" and call.protocol == "openai" and self.config.faults.error_statuses:
                drawn = "503"  # OpenAI signals overload with 503; 529 is Anthropic's
        headers = call.request.headers
        forced = headers.get("x-sim-fault")
        if forced is not None:
            try:
                return _none_if_ok(check_fault(forced.strip()))
            except ConfigError as exc:
                _raise("bad_request", 400, message=str(exc))
        if self.script:
            return _none_if_ok(self.script.popleft())
        cfg = self.config
        if cfg.api_keys is not None and _api_key(call) not in cfg.api_keys:
            return "401"
        if cfg.faults.auth_fail:
            return "401"
        if cfg.faults.quota_exhausted:
            return "quota"
        return drawn

    def _profile(self, model: str) -> ModelProfile:
        profile = self._profiles.get(model)
        if profile is None:
            if len(self._profiles) >= 4096:  # bounded even if clients invent model names
                self._profiles.clear()
            profile = self._profiles[model] = self.config.profile(model)
        return profile

    def _admit(self, call: Call, answer: Answer) -> None:
        cfg = self.config
        if cfg.max_concurrency is not None and self.admitted >= cfg.max_concurrency:
            call.fault = "cap"
            _raise("rate_limit", 429, reason="cap", limit=cfg.max_concurrency,
                   retry_after=cfg.cap_retry_after_s)  # fmt: skip
        if self.rpm is None and self.tpm is None:
            return
        now = self.clock.now()
        tokens = answer.prompt_tokens + answer.completion_tokens
        ask = call.ask
        if ask is not None and ask.max_tokens and call.protocol == "openai" and \
                self._style(call) == "moonshot":
            # Moonshot counts TPM on the prompt plus max_tokens, whatever is generated
            # (platform.moonshot.cn/docs/intro, "Rate limits").
            tokens = answer.prompt_tokens + ask.max_tokens
        for reason, window, amount in (("rpm", self.rpm, 1), ("tpm", self.tpm, tokens)):
            if window is not None:
                wait = window.wait(now, amount)
                if wait > 0:
                    call.fault = reason
                    _raise("rate_limit", 429, reason=reason, limit=window.limit, retry_after=wait)
        if self.rpm is not None:
            self.rpm.add(now, 1)
        if self.tpm is not None:
            self.tpm.add(now, tokens)
        if self.tpm_in is not None and self.tpm_out is not None:
            self.tpm_in.add(now, answer.prompt_tokens)
            self.tpm_out.add(now, answer.completion_tokens)

    # -- responses --------------------------------------------------------------------------

    def limit_headers(
        self, protocol: str, retry_after: float | None, style: str | None = None
    ) -> dict[str, str]:
        """Retry-After and rate-limit headers in the provider's dialect.

        OpenAI style: ``retry-after``, ``retry-after-ms``, ``x-ratelimit-*`` (resets as Go
        durations). Anthropic: ``retry-after`` and ``anthropic-ratelimit-{requests,tokens,
        input-tokens,output-tokens}-*`` (resets RFC 3339, ``…tokens-remaining`` rounded to
        the nearest thousand).
        DeepSeek/Moonshot/MiniMax styles: Retry-After only; Zhipu, Gemini (RetryInfo in
        the body instead): none at all.
        """
        cfg = self.config
        style = style or cfg.style
        out: dict[str, str] = {}
        if protocol == "openai" and style in ("zhipu", "gemini"):
            return out
        if retry_after is not None:
            out.update(retry_headers(retry_after, with_ms=protocol == "openai"))
        if protocol == "openai" and style not in styles.OPENAI_SHAPED:
            return out
        now = self.clock.now()
        units = [("requests", self.rpm), ("tokens", self.tpm)]
        if protocol == "anthropic":
            units += [("input-tokens", self.tpm_in), ("output-tokens", self.tpm_out)]
        for unit, window in units:
            if window is not None:
                limit, remaining = window.limit, window.remaining_at(now)
                reset = window.reset_in(now)
                if retry_after is not None and remaining == 0:
                    reset = max(reset, retry_after)
            elif unit == "requests" and retry_after is not None and cfg.max_concurrency:
                limit, remaining, reset = cfg.max_concurrency, 0, retry_after
            else:
                continue
            if protocol == "openai":
                out[f"x-ratelimit-limit-{unit}"] = str(limit)
                out[f"x-ratelimit-remaining-{unit}"] = str(remaining)
                out[f"x-ratelimit-reset-{unit}"] = go_duration(reset)
            else:
                prefix = f"anthropic-ratelimit-{unit}"
                out[f"{prefix}-limit"] = str(limit)
                if unit.endswith("tokens"):  # Anthropic rounds it to the nearest thousand
                    remaining = (remaining + 500) // 1000 * 1000
                out[f"{prefix}-remaining"] = str(remaining)
                out[f"{prefix}-reset"] = rfc3339(self.clock.wall() + reset)
        return out

    def _error(self, call: Call, reply: _Reply) -> web.Response:
        ctx = reply.ctx
        form = ctx.pop("form", None)
        no_retry = ctx.pop("no_retry", False)
        style = self._style(call)
        if reply.kind == "code":  # a business code: its provider's status and body
            status, body = provider_faults.coded_error(style, ctx["code"],
                                                       wall=self.clock.wall())
        elif call.protocol == "openai":
            status, body = openai_wire.error_body(
                style, reply.kind, reply.status, request_id=call.rid, **ctx
            )
        else:
            status, body = anthropic_wire.error_body(reply.kind, reply.status, call.rid, **ctx)
        headers = call.base_headers()
        if status == 429:
            headers.update(self.limit_headers(call.protocol, ctx.get("retry_after"), style))
            if call.protocol == "anthropic":  # what Anthropic's 429s carry (SDK issue #357)
                headers["x-should-retry"] = "true"
            if form is not None:  # a "429:<form>" fault: that Retry-After form only
                headers.pop("retry-after", None)
                headers.pop("retry-after-ms", None)
                wall = self.clock.wall()
                headers.update(retry_after_form_headers(form, ctx["retry_after"], wall=wall))
        if no_retry:  # a proxy that has retried already: the header the SDKs obey
            headers["x-should-retry"] = "false"
        if status == 502 and call.protocol == "openai" and style in styles.OPENAI_SHAPED:
            # What a gateway in front of an API really sends: an HTML page, not JSON.
            return web.Response(
                status=502, body=_BAD_GATEWAY_HTML, headers=headers, content_type="text/html"
            )
        return web.Response(
            status=status, body=body, headers=headers, content_type="application/json"
        )

    async def _deliver(self, call: Call, profile: ModelProfile) -> web.StreamResponse:
        ask, answer, fault = call.ask, call.answer, call.fault
        assert ask is not None
        assert answer is not None
        delay = profile.first_token_s
        if profile.jitter_s:
            delay += self.jitter_rng.random() * profile.jitter_s
        if fault is not None and fault.startswith("delay:"):
            delay += float(fault[6:])
        if fault == "hang":
            await self._hang(call)
        headers = call.base_headers()
        style = self._style(call)
        if self.rpm is not None or self.tpm is not None:
            headers.update(self.limit_headers(call.protocol, None, style))
        step = 1.0 / profile.tokens_per_s if profile.tokens_per_s else 0.0
        created = int(self.clock.wall())
        if call.protocol == "openai":
            resp_id = f"chatcmpl-sim{call.n:07d}"
        else:
            resp_id = f"msg_sim{call.n:07d}"
        if not ask.stream or fault == "json_body":  # json_body: stream: true ignored
            total = delay + step * answer.completion_tokens
            if total > 0:
                await self.clock.sleep(total)
            if call.protocol == "openai":
                body = openai_wire.render(resp_id, created, ask, answer, style)
            else:
                body = anthropic_wire.render(resp_id, ask, answer)
            call.completion = answer.completion_tokens
            if fault == "stream_error":
                body = self._error_envelope(call)
            return await send_whole(call, body, headers)
        if call.protocol == "openai":
            events, tokens = openai_wire.render_stream(resp_id, created, ask, answer, style)
            error_event = openai_wire.stream_error_event(style)
        else:
            events, tokens = anthropic_wire.render_stream(resp_id, ask, answer)
            error_event = anthropic_wire.stream_error_event()
        return await send_stream(
            call, events, tokens, headers,
            clock=self.clock, delay=delay, step=step, error_event=error_event,
        )  # fmt: skip

    def _error_envelope(self, call: Call) -> bytes:
        """An error body sent with HTTP 200, as some gateways do (non-streamed stream_error)."""
        call.completion = 0
        if call.protocol == "openai":
            return openai_wire.error_body(self._style(call), "server", 500)[1]
        return anthropic_wire.error_body("server", 529, call.rid)[1]

    async def _hang(self, call: Call) -> NoReturn:
        """Never answer: wait until the client gives up (the handler is cancelled), we
        stop, or ``hang_max_s`` passes; then close the connection unanswered."""
        if self.stopping is None:
            self.stopping = asyncio.Event()
        stop = asyncio.ensure_future(self.stopping.wait())
        bound = asyncio.ensure_future(self.clock.sleep(self.config.faults.hang_max_s))
        try:
            await asyncio.wait((stop, bound), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            bound.cancel()
        transport = call.request.transport
        if transport is not None:
            transport.abort()
        raise asyncio.CancelledError


def _raise_immediate(fault: str, retry_after: float) -> NoReturn:
    if fault == "quota":
        _raise("quota", 429)
    if fault.startswith("code:"):
        _raise("code", 0, code=fault[5:], retry_after=retry_after)
    if fault.endswith(":no_retry"):
        try:
            _raise_immediate(fault.partition(":")[0], retry_after)
        except _Reply as reply:
            reply.ctx["no_retry"] = True
            raise
    if fault.startswith("429:"):
        _raise("rate_limit", 429, reason="fault", retry_after=retry_after, form=fault[4:])
    status = int(fault)
    if status == 429:
        _raise("rate_limit", 429, reason="fault", retry_after=retry_after)
    if status == 401:
        _raise("auth", 401)
    if status == 400:
        _raise("bad_request", 400, message="The simulator was told to reject this request.")
    _raise("server" if status >= 500 else "status", status)


def _is_immediate(fault: str) -> bool:
    return fault not in _DELIVERY and not fault.startswith(("delay:", "finish:"))


def _none_if_ok(fault: str) -> str | None:
    return None if fault == "ok" else fault


def _api_key(call: Call) -> str | None:
    headers = call.request.headers
    if call.protocol == "anthropic" and "x-api-key" in headers:
        return headers["x-api-key"]
    auth = headers.get("authorization", "")
    return auth[7:] if auth[:7].lower() == "bearer " else None
