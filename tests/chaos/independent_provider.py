"""An independent fake LLM provider: OpenAI Chat Completions and Anthropic Messages.

Written from the providers' wire facts (PROVIDERS.md) and their public docs, NOT from
shoal: it imports nothing from ``shoal`` (its own simulator agrees with shoal's assumptions;
this one need not). Run it as its own process so its CPU is not the client's:

    python tests/chaos/independent_provider.py --port 0 --seed 3 --faults storm

The first stdout line is its base URL (``http://127.0.0.1:PORT``). Endpoints:

- ``POST /v1/chat/completions`` (OpenAI; ``stream`` with ``stream_options.include_usage``)
- ``POST /v1/messages`` (Anthropic; ``stream``: message_start, content_block_*, ping,
  message_delta with cumulative usage, message_stop)
- ``GET /_stats``: per tag (``x-shoal-tag`` header, else ``metadata.tag``/``user_id``)
  the requests seen and complete answers sent; billed tokens (every 200 started);
  faults injected. ``POST /_reset`` clears them.

Faults (``--faults``): ``none``; ``quota`` (every request gets the provider's quota /
billing error: OpenAI 429 ``insufficient_quota``; Anthropic 402 ``billing_error`` or
its 400 "credit balance is too low"); ``storm``, drawn per request from a seeded RNG:
20% 5xx (500/502/503, and 529 on Anthropic; bodies as provider JSON envelopes, a
proxy's HTML page or an Envoy text line), 10% 429 with Retry-After as delta seconds,
an HTTP-date, ``retry-after-ms`` or absent, 5% hangs (nothing at all; or, for a
stream, a 200 with its headers and then silence), 2% cut (the connection closed
mid-body), 2% malformed (truncated JSON with 200; SSE data that is not JSON), 2%
errors inside a 200 stream (Anthropic ``event: error`` overloaded_error, OpenAI
``data: {"error":…}``), before or after the first text.

Every answer uses wire quirks real servers have: CRLF or LF line ends, ``: keep-alive``
comments, ``data:`` with or without the space, chunked transfer encoding with chunk
boundaries that split lines and UTF-8 characters, unknown extra JSON fields, blank
lines before a JSON body.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import gzip
import json
import logging
import random
import socket
import time
import uuid
from collections import Counter
from typing import Any, NoReturn

from aiohttp import web

WORDS = ["storm", "café", "naïve", "水", "🌊", "résumé", "Ω", "tide", "—", "ok", "façade"]


class Stats:
    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()  # tag -> requests seen
        self.complete: Counter[str] = Counter()  # tag -> complete answers sent
        self.faults: Counter[str] = Counter()
        self.billed_prompt = 0
        self.billed_completion = 0
        self.total = 0

    def json(self) -> dict[str, Any]:
        return {
            "requests": self.total,
            "requests_by_tag": dict(self.requests),
            "complete_by_tag": dict(self.complete),
            "faults": dict(self.faults),
            "billed_prompt_tokens": self.billed_prompt,
            "billed_completion_tokens": self.billed_completion,
        }


class Provider:
    def __init__(self, seed: int, faults: str, ttft: float) -> None:
        self.rng = random.Random(seed)
        self.faults = faults
        self.ttft = ttft
        self.stats = Stats()

    # -- bookkeeping ---------------------------------------------------------------------

    def bill(self, prompt: int, completion: int) -> None:
        self.stats.billed_prompt += prompt
        self.stats.billed_completion += completion

    def draw(self, protocol: str, stream: bool) -> str:
        if self.faults == "quota":
            return "quota"
        if self.faults != "storm":
            return "ok"
        r = self.rng.random()
        if r < 0.20:
            codes = ["500", "502", "503"] + (["529", "529"] if protocol == "anthropic" else [])
            return self.rng.choice(codes)
        for fault, share in (("429", 0.10), ("hang", 0.05), ("cut", 0.02),
                             ("malformed", 0.02), ("stream_error", 0.02)):
            r -= share
            if r < 0.20:
                return fault if (fault != "stream_error" or stream) else "ok"
        return "ok"

    # -- the endpoints -------------------------------------------------------------------

    async def openai(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, "openai")

    async def anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, "anthropic")

    async def serve(self, request: web.Request, protocol: str) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
            assert isinstance(body, dict) and isinstance(body.get("messages"), list)
        except (ValueError, AssertionError):
            return error_response(protocol, 400, "invalid_request_error", "bad JSON body")
        given = body.get("metadata")
        meta: dict[str, Any] = given if isinstance(given, dict) else {}
        tag = request.headers.get("x-shoal-tag") or meta.get("tag") or meta.get("user_id") or ""
        stream = bool(body.get("stream"))
        self.stats.total += 1
        self.stats.requests[tag] += 1
        fault = self.draw(protocol, stream)
        self.stats.faults[fault] += 1
        await asyncio.sleep(self.ttft * (0.5 + self.rng.random()))
        if fault == "quota":
            return quota_response(protocol, self.rng)
        if fault in ("500", "502", "503", "529"):
            return server_error(protocol, int(fault), self.rng)
        if fault == "429":
            return rate_limited(protocol, self.rng)
        if fault == "cut" and self.rng.random() < 0.25:
            cut(request)  # the connection dropped before any answer: nothing billed
        if fault == "hang" and not (stream and self.rng.random() < 0.5):
            await asyncio.sleep(3600)  # accept, never answer
        answer = make_answer(body, protocol, self.rng)
        self.bill(answer["prompt_tokens"], answer["completion_tokens"])
        if stream and fault == "ok" and self.rng.random() < 0.02:
            self.stats.faults["json_for_stream"] += 1  # a proxy that ignored stream: true
            resp, done = await self.write_json(request, protocol, answer, fault)
        elif stream:
            resp, done = await self.write_stream(request, protocol, body, answer, fault)
        else:
            resp, done = await self.write_json(request, protocol, answer, fault)
        if done:
            self.stats.complete[tag] += 1
        return resp

    # -- writing -------------------------------------------------------------------------

    async def write_json(self, request: web.Request, protocol: str, answer: dict[str, Any],
                         fault: str) -> tuple[web.StreamResponse, bool]:
        doc = openai_body(answer) if protocol == "openai" else anthropic_body(answer)
        text = json.dumps(doc, ensure_ascii=self.rng.random() < 0.3)
        if self.rng.random() < 0.2:
            text = "\n\n" + text  # DeepSeek under load: blank lines before the JSON
        data = text.encode()
        if fault == "malformed":
            data = data[: self.rng.randrange(1, max(2, len(data) - 1))]
        headers = ok_headers(protocol, self.rng)
        if "gzip" in request.headers.get("Accept-Encoding", "") and self.rng.random() < 0.3:
            data = gzip.compress(data, compresslevel=1)  # Cloudflare-fronted APIs do
            headers["Content-Encoding"] = "gzip"
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_type = "application/json"
        chunked = fault == "cut" or self.rng.random() < 0.5
        if chunked:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = len(data)
        await resp.prepare(request)
        if fault == "cut":
            await self.write_slices(resp, data[: len(data) // 2])
            cut(request)
        if chunked:
            await self.write_slices(resp, data)
        else:
            await resp.write(data)
        await resp.write_eof()
        return resp, fault != "malformed"

    async def write_stream(self, request: web.Request, protocol: str, body: dict[str, Any],
                           answer: dict[str, Any], fault: str
                           ) -> tuple[web.StreamResponse, bool]:
        nl = self.rng.choice(["\r\n", "\r\n", "\n", "\n", "\n", "\r"])
        space = self.rng.random() < 0.6
        if protocol == "openai":
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = openai_events(answer, usage)
        else:
            events = anthropic_events(answer, self.rng)
        resp = web.StreamResponse(status=200, headers=ok_headers(protocol, self.rng))
        resp.content_type = "text/event-stream"
        if self.rng.random() < 0.5:
            resp.charset = "utf-8"
        resp.headers["Cache-Control"] = "no-cache"
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if fault == "hang" and self.rng.random() < 0.5:  # headers, a comment, silence
            if self.rng.random() < 0.5:
                await resp.write(f": keep-alive{nl}{nl}".encode())
            await asyncio.sleep(3600)
        first_text = next(i for i, e in enumerate(events) if e[2])  # index of first text
        stop_at: int | None = None
        if fault == "hang":  # the rest: a stall after some output
            stop_at = self.rng.randrange(first_text + 1, len(events) - 1)
        if fault in ("cut", "malformed", "stream_error"):
            early = self.rng.random() < 0.5
            stop_at = self.rng.randrange(1, first_text + 1) if early else \
                self.rng.randrange(first_text + 1, len(events) - 1)
        out: list[str] = []
        if self.rng.random() < 0.3:
            out.append(f": keep-alive{nl}{nl}")
        for i, (name, payload, _) in enumerate(events):
            if stop_at is not None and i == stop_at:
                break
            out.append(sse(name, payload, nl, space, self.rng))
            if protocol == "anthropic" and self.rng.random() < 0.02:  # an event type
                out.append(sse("x_indep_progress", '{"type": "x_indep_progress", '  # unknown
                               '"pct": 50}', nl, space))  # to the client: to be ignored
            if self.rng.random() < 0.15:
                out.append(f": keep-alive{nl}{nl}")
        if fault == "malformed":
            out.append(sse(None, '{"choices":[{"delta":{"content":"br', nl, space)
                       if self.rng.random() < 0.5 else sse(None, "<html>oops</html>", nl, space))
        elif fault == "stream_error":
            out.append(stream_error(protocol, nl, space))
        await self.write_slices(resp, "".join(out).encode())
        if fault == "hang":
            await asyncio.sleep(3600)
        if fault == "cut":
            cut(request)
        await resp.write_eof()
        return resp, fault == "ok"

    async def write_slices(self, resp: web.StreamResponse, data: bytes) -> None:
        """Chunked writes of 1-64 bytes: boundaries fall inside lines and characters."""
        i = 0
        while i < len(data):
            n = self.rng.randint(1, 64)
            await resp.write(data[i:i + n])
            i += n
            if self.rng.random() < 0.1:
                await asyncio.sleep(0.002)

    async def stats_view(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.json())

    async def reset_view(self, request: web.Request) -> web.Response:
        self.stats = Stats()
        return web.json_response({"ok": True})


def cut(request: web.Request) -> NoReturn:
    if request.transport is not None:
        request.transport.abort()  # no final chunk, no end marker
    raise asyncio.CancelledError  # the handler ends here; aiohttp writes nothing more


# -- answers -------------------------------------------------------------------------------


def make_answer(body: dict[str, Any], protocol: str, rng: random.Random) -> dict[str, Any]:
    """What the model says: a tool call when tools are offered and no tool result came
    back yet, else a short text of words with multibyte characters."""
    messages = body["messages"]
    prompt = max(1, len(json.dumps(messages)) // 4 + len(json.dumps(body.get("system", ""))) // 4)
    tools = body.get("tools") or []
    answered = any(m.get("role") == "tool" for m in messages) or any(
        isinstance(m.get("content"), list)
        and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in m["content"])
        for m in messages)
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
    answer: dict[str, Any] = {  # the id ends in the usage billed: an oracle for clients
        "id": f"{uuid.uuid4().hex[:16]}_{prompt}_{len(words)}",
        "model": str(body.get("model", "m")),
        "text": " ".join(words), "prompt_tokens": prompt, "completion_tokens": len(words),
        "tool": None,
    }
    if tools and not answered:
        tool = tools[0].get("function", tools[0])
        props = (tool.get("parameters") or tool.get("input_schema") or {}).get("properties", {})
        args = dict.fromkeys(props, "tides café")
        answer["tool"] = (f"call_{uuid.uuid4().hex[:12]}", tool["name"], json.dumps(args))
        answer["text"] = "" if protocol == "openai" else "Let me look that up."
    return answer


def usage_openai(a: dict[str, Any]) -> dict[str, Any]:
    p, c = a["prompt_tokens"], a["completion_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def usage_anthropic(a: dict[str, Any], output: int) -> dict[str, Any]:
    return {"input_tokens": a["prompt_tokens"], "output_tokens": output,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "service_tier": "standard", "server_tool_use": None}


def openai_body(a: dict[str, Any]) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": a["text"] or None, "refusal": None,
                           "annotations": []}
    if a["tool"]:
        cid, name, args = a["tool"]
        msg["tool_calls"] = [{"id": cid, "type": "function",
                              "function": {"name": name, "arguments": args}}]
    return {"id": f"chatcmpl-{a['id']}", "object": "chat.completion", "created": int(time.time()),
            "model": a["model"], "choices": [{
                "index": 0, "message": msg, "logprobs": None,
                "finish_reason": "tool_calls" if a["tool"] else "stop"}],
            "usage": usage_openai(a), "service_tier": "default",
            "system_fingerprint": "fp_indep01", "x_indep_trace": {"region": "eu", "hop": 2}}


def anthropic_body(a: dict[str, Any]) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": a["text"], "citations": None}]
    if a["tool"]:
        cid, name, args = a["tool"]
        content.append({"type": "tool_use", "id": "toolu_" + cid[5:], "name": name,
                        "input": json.loads(args)})
    return {"id": f"msg_{a['id']}", "type": "message", "role": "assistant", "model": a["model"],
            "content": content, "stop_reason": "tool_use" if a["tool"] else "end_turn",
            "stop_sequence": None, "usage": usage_anthropic(a, a["completion_tokens"]),
            "container": None, "x_indep_trace": {"hop": 1}}


# Events are (event name or None, JSON text, carries model output).
Event = tuple[str | None, str, bool]


def openai_events(a: dict[str, Any], include_usage: bool) -> list[Event]:
    base = {"id": f"chatcmpl-{a['id']}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": a["model"], "system_fingerprint": "fp_indep01",
            "service_tier": "default"}

    def chunk(delta: dict[str, Any], finish: str | None = None, output: bool = False) -> Event:
        doc = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                    "finish_reason": finish}], "obfuscation": "x9Q"}
        if include_usage:
            doc["usage"] = None
        return (None, json.dumps(doc, ensure_ascii=False), output)

    out = [chunk({"role": "assistant", "content": "", "refusal": None})]
    if a["tool"]:
        cid, name, args = a["tool"]
        out.append(chunk({"tool_calls": [{"index": 0, "id": cid, "type": "function",
                                          "function": {"name": name, "arguments": ""}}]},
                         output=True))
        for i in range(0, len(args), 7):
            out.append(chunk({"tool_calls": [{"index": 0,
                                              "function": {"arguments": args[i:i + 7]}}]},
                             output=True))
    else:
        words = a["text"].split(" ")
        for i, w in enumerate(words):
            out.append(chunk({"content": w if i == 0 else " " + w}, output=True))
    out.append(chunk({}, "tool_calls" if a["tool"] else "stop"))
    if include_usage:
        out.append((None, json.dumps({**base, "choices": [], "usage": usage_openai(a),
                                      "obfuscation": "a1"}), False))
    out.append((None, "[DONE]", False))
    return out


def anthropic_events(a: dict[str, Any], rng: random.Random) -> list[Event]:
    def ev(name: str, doc: dict[str, Any], output: bool = False) -> Event:
        return (name, json.dumps({"type": name, **doc}, ensure_ascii=False), output)

    start = {"id": f"msg_{a['id']}", "type": "message", "role": "assistant", "model": a["model"],
             "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": usage_anthropic(a, 1)}
    out = [ev("message_start", {"message": start}), ev("ping", {})]
    out.append(ev("content_block_start", {"index": 0, "content_block": {"type": "text",
                                                                         "text": ""}}))
    words = a["text"].split(" ")
    for i, w in enumerate(words):
        out.append(ev("content_block_delta", {"index": 0, "delta": {
            "type": "text_delta", "text": w if i == 0 else " " + w}}, output=True))
        if rng.random() < 0.1:
            out.append(ev("ping", {}))
    out.append(ev("content_block_stop", {"index": 0}))
    if a["tool"]:
        cid, name, args = a["tool"]
        out.append(ev("content_block_start", {"index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_" + cid[5:], "name": name, "input": {}}}))
        for i in range(0, len(args), 5):
            out.append(ev("content_block_delta", {"index": 1, "delta": {
                "type": "input_json_delta", "partial_json": args[i:i + 5]}}, output=True))
        out.append(ev("content_block_stop", {"index": 1}))
    half = a["completion_tokens"] // 2
    if rng.random() < 0.3:  # cumulative usage, sent twice: a client must not add them up
        out.append(ev("message_delta", {"delta": {"stop_reason": None, "stop_sequence": None},
                                        "usage": {"output_tokens": half}}))
    final: dict[str, Any] = {"output_tokens": a["completion_tokens"]}
    if rng.random() < 0.5:  # newer API versions repeat the input counts here
        final.update(input_tokens=a["prompt_tokens"], cache_creation_input_tokens=0,
                     cache_read_input_tokens=0)
    out.append(ev("message_delta", {
        "delta": {"stop_reason": "tool_use" if a["tool"] else "end_turn", "stop_sequence": None},
        "usage": final}))
    out.append(ev("message_stop", {}))
    return out


def sse(name: str | None, data: str, nl: str, space: bool, rng: random.Random | None = None
        ) -> str:
    """One SSE event. With ``rng``, sometimes an ``id:`` or ``retry:`` field, or the JSON
    split over several ``data:`` lines (they join with a newline: still the same JSON)."""
    head = f"event: {name}{nl}" if name else ""
    sp = " " if space else ""
    if rng is not None and rng.random() < 0.05:
        head += rng.choice([f"id: {rng.randrange(1000)}{nl}", f"retry: 3000{nl}"])
    lines = [data]
    if rng is not None and data.startswith("{") and ", " in data and rng.random() < 0.05:
        at = data.index(", ") + 1
        lines = [data[:at], data[at:]]
    return head + "".join(f"data:{sp}{line}{nl}" for line in lines) + nl


def stream_error(protocol: str, nl: str, space: bool) -> str:
    if protocol == "anthropic":
        doc = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
               "request_id": f"req_{uuid.uuid4().hex[:20]}"}
        return sse("error", json.dumps(doc), nl, space)
    doc = {"error": {"message": "The server had an error processing your request.",
                     "type": "server_error", "param": None, "code": None}}
    return sse(None, json.dumps(doc), nl, space)


# -- errors --------------------------------------------------------------------------------


def ok_headers(protocol: str, rng: random.Random) -> dict[str, str]:
    if protocol == "openai":
        return {"x-request-id": f"req_{uuid.uuid4().hex}", "openai-processing-ms": "57",
                "x-ratelimit-limit-requests": "10000", "x-ratelimit-remaining-requests": "9999",
                "x-ratelimit-reset-requests": "6ms", "x-ratelimit-reset-tokens": "0s"}
    return {"request-id": f"req_{uuid.uuid4().hex[:24]}",
            "anthropic-ratelimit-requests-limit": "4000",
            "anthropic-ratelimit-requests-remaining": "3999",
            "anthropic-ratelimit-requests-reset": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                time.gmtime())}


def error_response(protocol: str, status: int, kind: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    if protocol == "openai":
        doc: dict[str, Any] = {"error": {"message": message, "type": kind, "param": None,
                                         "code": None}}
    else:
        doc = {"type": "error", "error": {"type": kind, "message": message},
               "request_id": f"req_{uuid.uuid4().hex[:20]}"}
    return web.Response(status=status, text=json.dumps(doc), content_type="application/json",
                        headers=headers)


HTML_502 = """<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center>
<h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"""


def server_error(protocol: str, status: int, rng: random.Random) -> web.Response:
    shape = rng.random()
    if (status == 502 and shape < 0.6) or shape < 0.15:
        return web.Response(status=status, text=HTML_502.replace("502 Bad Gateway",
                            f"{status} {'Bad Gateway' if status == 502 else 'Error'}"),
                            content_type="text/html")
    if status == 503 and shape < 0.4:
        return web.Response(status=503, text="upstream connect error or disconnect/reset "
                            "before headers. reset reason: overflow", content_type="text/plain")
    if protocol == "anthropic":
        kind = {529: "overloaded_error", 503: "overloaded_error"}.get(status, "api_error")
        text = "Overloaded" if kind == "overloaded_error" else "Internal server error"
        return error_response(protocol, status, kind, text)
    message = ("The engine is currently overloaded, please try again later" if status == 503
               else "The server had an error while processing your request. Sorry about that!")
    return error_response(protocol, status, "server_error", message)


def rate_limited(protocol: str, rng: random.Random) -> web.Response:
    form = rng.choice(["delta", "date", "ms", "none"])
    headers: dict[str, str] = {}
    if form == "delta":
        # mostly 1-2 s; sometimes 20 s, a window's reset as Anthropic sends it
        headers["retry-after"] = str(rng.choice([1, 2, 1, 2, 1, 2, 1, 20]))
    elif form == "date":
        headers["Retry-After"] = email.utils.formatdate(time.time() + 2, usegmt=True)
    elif form == "ms":
        headers["retry-after-ms"] = str(rng.choice([250, 400.5, 800]))
    if protocol == "openai":
        headers.update({"x-ratelimit-remaining-requests": "0",
                        "x-ratelimit-reset-requests": "1.2s"})
        doc = {"error": {"message": "Rate limit reached for requests. Please try again in 1.2s.",
                         "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
        return web.Response(status=429, text=json.dumps(doc), content_type="application/json",
                            headers=headers)
    return error_response(protocol, 429, "rate_limit_error",
                          "Number of request tokens has exceeded your per-minute rate limit",
                          headers)


def quota_response(protocol: str, rng: random.Random) -> web.Response:
    if protocol == "openai":
        doc = {"error": {"message": "You exceeded your current quota, please check your plan "
                         "and billing details.", "type": "insufficient_quota", "param": None,
                         "code": "insufficient_quota"}}
        return web.Response(status=429, text=json.dumps(doc), content_type="application/json")
    if rng.random() < 0.5:
        return error_response(protocol, 402, "billing_error",
                              "Usage is blocked due to insufficient credits.")
    return error_response(protocol, 400, "invalid_request_error",
                          "Your credit balance is too low to access the Anthropic API. Please "
                          "go to Plans & Billing to upgrade or purchase credits.")


# -- the process ---------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> None:
    provider = Provider(args.seed, args.faults, args.ttft)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", provider.openai)
    app.router.add_post("/chat/completions", provider.openai)
    app.router.add_post("/v1/messages", provider.anthropic)
    app.router.add_get("/_stats", provider.stats_view)
    app.router.add_post("/_reset", provider.reset_view)
    # Idle keep-alive connections are closed after a few seconds, as uvicorn (vLLM) does
    # after 5 s: a client that reuses one just as it closes sees a disconnect.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                           keepalive_timeout=args.keepalive)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(1024)
    await web.SockSite(runner, sock).start()
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--faults", choices=["storm", "none", "quota"], default="none")
    p.add_argument("--ttft", type=float, default=0.05, help="seconds before the answer")
    p.add_argument("--keepalive", type=float, default=5.0, help="idle keep-alive seconds")
    args = p.parse_args()
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
