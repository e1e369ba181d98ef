"""The gateway's HTTP layer (aiohttp.web): routes, body limit, errors, metrics, logs.

Routes: ``POST /v1/chat/completions`` (OpenAI), ``POST /v1/messages`` and
``POST /v1/messages/count_tokens`` (Anthropic), ``GET /v1/models``, ``GET /health``,
``GET /ready``, ``GET /metrics``. Everything protocol-neutral is in
:mod:`shoal.gateway.calls`; this module only reads requests and writes answers, so the
HTTP server could be swapped without touching the call path.

Every error goes out in the caller's protocol envelope (:mod:`shoal.gateway.errors`);
a 500 means a bug in the gateway, logged without secrets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from shoal.errors import RequestRefused
from shoal.fastjson import loads
from shoal.gateway import anthropic_api, openai_api
from shoal.gateway.access_log import AccessRecord, emit
from shoal.gateway.access_log import log as access_log
from shoal.gateway.anthropic_api import AnthropicWire
from shoal.gateway.calls import Gateway, Spend, Wire
from shoal.gateway.errors import BadInput, Failure, Kind, failure_of
from shoal.gateway.openai_api import OpenAIWire
from shoal.gateway.streaming import stream_answer
from shoal.gateway.translate_anthropic import parse_messages_body
from shoal.tokens import estimate_prompt_tokens
from shoal.traffic.retirement import day_of, is_retired

__all__ = ["GATEWAY_KEY", "build_app"]

GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
OPENAI: Wire = OpenAIWire()
ANTHROPIC: Wire = AnthropicWire()
log = logging.getLogger("shoal.gateway")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_JSON = "application/json"
_BIG_BODY = 512 * 1024


def _protocol_of(request: web.Request) -> Wire:
    """Which envelope a caller expects when its route does not say (404s, models)."""
    if request.path.startswith("/v1/messages") or "anthropic-version" in request.headers:
        return ANTHROPIC
    return OPENAI


def error_response(wire: Wire, failure: Failure) -> web.Response:
    return web.Response(status=wire.error_status(failure), body=wire.error_body(failure),
                        content_type=_JSON, headers=failure.all_headers())


def _too_large(limit: int) -> BadInput:
    return BadInput(f"the request body is over the gateway's limit of {limit} bytes "
                    "(max_body_bytes in [gateway]); send a smaller request",
                    status=413, kind="too_large", code="request_too_large")


async def read_json(request: web.Request, limit: int) -> Any:
    """The body as JSON; a 413 past ``limit`` bytes, a 400 saying what is wrong."""
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    if not raw:
        raise BadInput("the request body is empty; send a JSON object")
    try:
        if len(raw) > _BIG_BODY:  # megabytes of JSON: parse off the event loop
            return await asyncio.to_thread(loads, raw)
        return loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"the request body is not valid JSON ({exc}); send a JSON object "
                       "with Content-Type: application/json") from None
    except RecursionError:
        raise BadInput("the request body nests too deeply to be a chat request") from None


# -- the chat endpoints -------------------------------------------------------------------

async def _chat(gw: Gateway, wire: Wire, request: web.Request,
                rec: AccessRecord) -> web.StreamResponse:
    if gw.draining:
        raise BadInput("the gateway is shutting down; retry on another replica",
                       status=503, kind="unavailable")
    body = await read_json(request, gw.settings.max_body_bytes)
    parsed = wire.parse(body)
    rec.stream = parsed.stream
    key = await gw.authenticate(request)
    rec.key = key.id
    # named before admission, so a refusal (the key's budget or limits, a 400) is counted
    # under its model, not "unknown" (an unknown model raises here, as admit would)
    rec.asked = parsed.request.model
    info = gw.model(parsed.request.model)
    rec.model = info.name
    adm = await gw.admit(parsed, wire.name, key, info)
    spend = Spend()
    try:
        if parsed.stream:
            return await stream_answer(gw, wire, request, parsed, adm=adm, spend=spend,
                                       rec=rec)
        try:
            answer = await gw.router.complete(parsed.request,
                                              deadline_s=gw.settings.request_timeout_s)
        except asyncio.CancelledError:
            spend.cut(adm, [])
            raise
        except Exception as exc:
            spend.failed(exc)
            raise
        spend.answered(answer)
        return web.Response(body=wire.render(answer, parsed.request.model),
                            content_type=_JSON)
    except RequestRefused as exc:  # an adapter refused it before any upstream request
        # The adapter names the neutral field at fault; the caller reads its own name.
        field = None if exc.param is None else parsed.param(exc.param)
        raise BadInput(str(exc), param=field) from exc
    finally:
        rec.input_tokens = spend.usage.input_tokens
        rec.output_tokens = spend.usage.output_tokens
        rec.cost_usd = spend.cost_usd
        gw.settle(adm.grant, spend)


def _finish(gw: Gateway, rec: AccessRecord) -> None:
    duration = time.perf_counter() - rec.started
    gw.metrics.observe(route=rec.route, model=rec.model, key=rec.key, status=rec.status,
                       duration_s=duration, error_kind=rec.error,
                       input_tokens=rec.input_tokens, output_tokens=rec.output_tokens,
                       cost_usd=rec.cost_usd)
    if access_log.isEnabledFor(logging.INFO):
        emit(rec.line(duration))


def chat_handler(gw: Gateway, wire: Wire) -> Handler:
    """The chat route of ``wire``: every failure answered in its envelope, here (no
    middleware: one less layer of awaits on every request)."""
    async def handle(request: web.Request) -> web.StreamResponse:
        rec = AccessRecord(request.method, wire.route, time.perf_counter())
        in_flight = gw.metrics.in_flight_of(wire.route)
        in_flight.inc()
        try:
            try:
                response = await _chat(gw, wire, request, rec)
            except Exception as exc:
                failure = failure_of(exc)
                rec.error = failure.kind
                response = error_response(wire, failure)
        except asyncio.CancelledError:
            rec.status = 499  # nginx's "client closed request": nothing was sent
            rec.error = rec.error or "client_disconnected"
            raise
        else:
            rec.status = response.status
            return response
        finally:
            in_flight.dec()
            _finish(gw, rec)

    return handle


# -- the other endpoints ------------------------------------------------------------------

async def count_tokens(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY_KEY]
    try:
        body = await read_json(request, gw.settings.max_body_bytes)
        _, chat = parse_messages_body(body, need_max_tokens=False)
        key = await gw.authenticate(request)
        info = gw.model(chat.model)
        gw.allowed(key, info, chat.model)
        tokens = estimate_prompt_tokens(chat, info.encoding)
    except Exception as exc:
        return error_response(ANTHROPIC, failure_of(exc))
    return web.json_response({"input_tokens": tokens})


async def models(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY_KEY]
    wire = _protocol_of(request)
    try:
        key = await gw.authenticate(request)
    except Exception as exc:
        return error_response(wire, failure_of(exc))
    config = gw.router.config
    today, _ = day_of(gw.router.clock)
    names: list[tuple[str, str]] = []
    for info in sorted(config.models.values(), key=lambda m: m.name):
        if not config.usable(info) or is_retired(info, today):
            continue
        try:
            gw.keys.check_model(key, info.name)
        except Exception:  # noqa: S112 - a model this key may not use is not listed
            continue
        names.append((info.name, info.provider))
    body = (anthropic_api.models_body(names) if wire is ANTHROPIC
            else openai_api.models_body(names))
    return web.Response(body=body, content_type=_JSON)


async def health(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.StreamResponse:
    """200 once the Router is built and the key store answers; 503 while starting or
    draining, or when the key store does not answer."""
    gw = request.app[GATEWAY_KEY]
    if gw.draining or not gw.ready:
        return web.json_response({"status": "draining" if gw.draining else "starting"},
                                 status=503)
    # A key store says whether it answers (StoreKeys: counting its keys is a query).
    check = getattr(gw.keys, "ready", None) or getattr(gw.keys, "active_keys", None)
    if callable(check):
        try:
            ok = await check()
        except Exception as exc:
            return web.json_response({"status": "key store unavailable",
                                      "error": type(exc).__name__}, status=503)
        if ok is False:  # active_keys() == 0 is a store that answers, not False
            return web.json_response({"status": "key store unavailable"}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.StreamResponse:
    body, content_type = request.app[GATEWAY_KEY].metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def _no_route(request: web.Request, status: int) -> web.Response:
    kind: Kind = "not_found" if status == 404 else "invalid_request"
    return error_response(_protocol_of(request), Failure(
        status, kind, f"no route {request.method} {request.path}; the gateway serves POST "
        "/v1/chat/completions, POST /v1/messages, GET /v1/models"))


def enveloped(handler: Handler) -> Handler:
    """``handler`` with aiohttp's own answers (413, ...) and any bug in the caller's
    protocol envelope instead of HTML or a bare 500: for every route but the chat
    routes, which answer their failures themselves. (A middleware would do it for all
    routes, at the cost of two more awaiting layers on every chat request.)"""
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status in (404, 405):
                return _no_route(request, exc.status)
            kind: Kind = "too_large" if exc.status == 413 else "invalid_request"
            return error_response(_protocol_of(request),
                                  Failure(exc.status, kind, exc.reason))
        except Exception as exc:
            return error_response(_protocol_of(request), failure_of(exc))

    return handle


def _catch_all(app: web.Application) -> Handler:
    """The last route: any path no route serves (404), or a served path with another
    method (405), in the caller's envelope."""
    async def no_route(request: web.Request) -> web.StreamResponse:
        for resource in app.router.resources():
            if resource is not catch_all:
                _, allowed = await resource.resolve(request)
                if allowed:  # the path is served, with other methods
                    return _no_route(request, 405)
        return _no_route(request, 404)

    catch_all = app.router.add_resource("/{tail:.*}")
    catch_all.add_route("*", no_route)
    return no_route


# -- the application ----------------------------------------------------------------------

def attach_runtime_metrics(gw: Gateway) -> None:
    """The Router's own metrics (channels, limits, retries, breakers, calls) from
    :class:`shoal.observe.prometheus.PrometheusExporter`, on the gateway's registry: one
    ``/metrics`` serves both."""
    from shoal.observe.prometheus import PrometheusExporter

    try:
        exporter = PrometheusExporter(gw.router.events, gw.metrics.registry, router=gw.router)
    except Exception as exc:  # metrics are never a reason not to serve
        log.warning("runtime metrics not attached: %s", exc)
        return
    exporter.subscribe()
    gw.on_close.append(exporter.unsubscribe)


async def _startup(app: web.Application) -> None:
    from shoal.tokens import preload

    gw = app[GATEWAY_KEY]
    for encoding in sorted({m.encoding for m in gw.router.config.models.values()}):
        await preload(encoding)  # the first estimate must not block the loop
    gw.ready = True


async def _cleanup(app: web.Application) -> None:
    gw = app[GATEWAY_KEY]
    gw.draining = True
    await gw.aclose()


def build_app(gw: Gateway) -> web.Application:
    """The aiohttp application serving ``gw``; run it with ``handler_cancellation=True``
    (:func:`shoal.gateway.server.serve` does), so a client that leaves cancels its call."""
    app = web.Application(client_max_size=gw.settings.max_body_bytes)
    app[GATEWAY_KEY] = gw
    app.router.add_post("/v1/chat/completions", chat_handler(gw, OPENAI))
    app.router.add_post("/v1/messages", chat_handler(gw, ANTHROPIC))
    app.router.add_post("/v1/messages/count_tokens", enveloped(count_tokens))
    app.router.add_get("/v1/models", enveloped(models))
    app.router.add_get("/health", enveloped(health))
    app.router.add_get("/ready", enveloped(ready))
    app.router.add_get("/metrics", enveloped(metrics))
    _catch_all(app)
    app.on_startup.append(_startup)
    app.on_cleanup.append(_cleanup)
    attach_runtime_metrics(gw)
    for wire in (OPENAI, ANTHROPIC):  # in-flight gauges read 0 before the first call
        gw.metrics.in_flight_of(wire.route)
    return app
