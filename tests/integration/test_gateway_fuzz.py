"""Property-based fuzzing of ``POST /v1/chat/completions`` and ``POST /v1/messages`` on a
real ``shoal gateway`` process (simulator upstream, real virtual keys).

Bodies are well-formed-ish JSON of random shapes: the protocol's fields with values of
every JSON type (and sometimes the right one), unknown extra fields, random roles and
content parts, any JSON at the top. Headers are random too: keys good, revoked, junk or
missing, in either protocol's header, random content types and extra headers. For every
answer: no status 500 (no 5xx at all: nothing here is an upstream failure), an error is a
valid envelope of the route's protocol, a success is a valid answer, and no secret (the
virtual keys, the upstream key) is echoed in a body or header.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from gateway_procs import Gateway, check_envelope, check_no_secret, running_gateway
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(300)

OPENAI = "/v1/chat/completions"
ANTHROPIC = "/v1/messages"
SEEN: Counter[int] = Counter()  # statuses answered, per test
FUZZ = settings(max_examples=200, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("gw-fuzz")) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


# -- strategies ---------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
# A valid body of each protocol, varied: the base the mutations start from.
roles = st.sampled_from(["user", "assistant"])
text = st.text(max_size=60).map(lambda t: "q " + t)  # providers refuse blank text blocks
text_part = st.fixed_dictionaries({"type": st.just("text"), "text": text})
cached_part = st.fixed_dictionaries({"type": st.just("text"), "text": text,
                                     "cache_control": st.just({"type": "ephemeral"})})
contents = text | st.lists(text_part, min_size=1, max_size=2)
turns = st.lists(st.fixed_dictionaries({"role": roles, "content": contents}), min_size=1,
                 max_size=3).map(lambda ms: [*ms[:-1], {**ms[-1], "role": "user"}])
fn_tool = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["lookup", "add"]), "parameters": st.just(
        {"type": "object", "properties": {"q": {"type": "string"}}})})})
an_tool = st.fixed_dictionaries({"name": st.sampled_from(["lookup", "add"]), "input_schema":
                                 st.just({"type": "object", "properties": {}})})

OPENAI_OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "stream": st.booleans(), "max_tokens": st.integers(1, 300),
    "temperature": st.floats(0, 1), "tools": st.lists(fn_tool, min_size=1, max_size=2),
    "tool_choice": st.sampled_from(["auto", "none"]),
    "response_format": st.sampled_from([{"type": "json_object"}, {"type": "text"}]),
    "stream_options": st.just({"include_usage": True}), "seed": st.integers(0, 99),
    "stop": st.lists(st.text(min_size=1, max_size=5), max_size=2), "user": text,
}
ANTHROPIC_OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "stream": st.booleans(), "temperature": st.floats(0, 1),
    "system": text | st.lists(text_part | cached_part, min_size=1, max_size=2),
    "tools": st.lists(an_tool, min_size=1, max_size=2), "top_k": st.integers(1, 50),
    "tool_choice": st.just({"type": "auto"}),
    "stop_sequences": st.lists(st.text(min_size=1, max_size=5), max_size=2),
    "metadata": st.just({"user_id": "u-1"}),
}
MODELS = st.sampled_from(["gpt-test", "claude-test"])


def _json_mode_says_json(body: dict[str, Any]) -> dict[str, Any]:
    """JSON mode wants the word "json" in the prompt (OpenAI answers 400 without it,
    and the gateway sends json_object upstream as it came): a valid body has it."""
    if (body.get("response_format") or {}).get("type") != "json_object":
        return body
    body = json.loads(json.dumps(body))
    last = body["messages"][-1]
    content = last["content"]
    last["content"] = (content + " Reply in JSON." if isinstance(content, str)
                       else [*content, {"type": "text", "text": "Reply in JSON."}])
    return body


def _stream_options_with_stream(body: dict[str, Any]) -> dict[str, Any]:
    """stream_options only with stream: true (OpenAI answers 400 otherwise, as does the
    gateway): a valid body that has them streams."""
    if "stream_options" in body:
        return {**body, "stream": True}
    return body


def valid(route: str) -> st.SearchStrategy[dict[str, Any]]:
    if route == OPENAI:
        return st.fixed_dictionaries({"model": MODELS, "messages": turns},
                                     optional=OPENAI_OPTIONAL).map(
            _json_mode_says_json).map(_stream_options_with_stream)
    return st.fixed_dictionaries({"model": MODELS, "messages": turns,
                                  "max_tokens": st.integers(1, 300)},
                                 optional=ANTHROPIC_OPTIONAL)


def _mutate(body: dict[str, Any], edits: list[tuple[str, str, Any]]) -> dict[str, Any]:
    """Each edit replaces (or adds) a top-level field, a field of the first message or
    its whole content, or deletes a field."""
    body = json.loads(json.dumps(body))
    for where, key, value in edits:
        target = body
        messages = body.get("messages")
        if (where == "message" and isinstance(messages, list) and messages
                and isinstance(messages[0], dict)):  # an earlier edit may have replaced it
            target = messages[0]
        if value is DELETE:
            target.pop(key, None)
        else:
            target[key] = value
    return body


DELETE = object()
field_names = st.sampled_from(["model", "messages", "max_tokens", "stream", "tools",
                               "temperature", "system", "tool_choice", "response_format",
                               "stream_options", "thinking", "n", "role", "content",
                               "tool_calls", "name"]) | st.text(max_size=8)
edits = st.lists(st.tuples(st.sampled_from(["top", "message"]), field_names,
                           json_values | st.just(DELETE)), min_size=1, max_size=2)


def bodies(route: str) -> st.SearchStrategy[Any]:
    """Valid bodies, valid bodies with one or two fields of random type or missing, and
    any JSON value at all."""
    base = valid(route)
    mutated = st.builds(_mutate, base, edits)
    return st.one_of(base, mutated, mutated, json_values)


header_text = st.text(alphabet=string.ascii_letters + string.digits + " -_./:;=,",
                      max_size=30).map(str.strip)
extra_headers = st.dictionaries(
    st.sampled_from(["accept", "anthropic-version", "anthropic-beta", "openai-organization",
                     "x-request-id", "user-agent", "accept-encoding", "x-stainless-lang",
                     "idempotency-key", "x-custom"]),
    header_text, max_size=4)


@st.composite
def headers(draw: st.DrawFn, route: str, gw: Gateway) -> dict[str, str]:
    who = draw(st.sampled_from(["good", "good", "good", "none", "revoked", "junk"]))
    key = {"good": gw.key, "revoked": gw.revoked_key, "junk": draw(header_text),
           "none": None}[who]
    out = draw(extra_headers)
    out["content-type"] = draw(st.sampled_from(
        ["application/json", "application/json", "text/plain", "application/x-www-form-urlencoded",
         "application/json; charset=utf-8"]))
    if key is not None:
        where = draw(st.sampled_from(["authorization", "x-api-key"]))
        out[where] = f"Bearer {key}".strip() if where == "authorization" else key
    return out


# -- the property -------------------------------------------------------------------------------


def check(gw: Gateway, route: str, resp: httpx.Response) -> None:
    SEEN[resp.status_code] += 1
    assert resp.status_code != 500, resp.text
    assert resp.status_code < 500, (resp.status_code, resp.text)
    check_no_secret(gw, resp)
    if resp.status_code >= 400:
        check_envelope(route, resp)
        return
    assert resp.status_code == 200, (resp.status_code, resp.text)
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        assert "data:" in resp.text or "event:" in resp.text, resp.text[:300]
        return
    body = resp.json()
    if route == OPENAI:
        assert body.get("object") == "chat.completion", body
    else:
        assert body.get("type") == "message", body


def fuzz_once(gw: Gateway, client: httpx.Client, route: str, body: Any,
              hdrs: dict[str, str]) -> None:
    resp = client.post(gw.url + route, content=json.dumps(body).encode(), headers=hdrs)
    check(gw, route, resp)


@pytest.mark.parametrize("route", [OPENAI, ANTHROPIC])
def test_random_bodies_and_headers_never_500_nor_echo_a_secret(
        gw: Gateway, client: httpx.Client, route: str) -> None:
    @FUZZ
    @given(body=bodies(route), data=st.data())
    def prop(body: Any, data: st.DataObject) -> None:
        fuzz_once(gw, client, route, body, data.draw(headers(route, gw)))

    SEEN.clear()
    prop()
    print(f"{route}: statuses {dict(sorted(SEEN.items()))}")
    # The fuzzer got past parsing to real answers, and to refusals of several kinds.
    assert SEEN[200] > 0, SEEN
    assert len([s for s in SEEN if 400 <= s < 500]) >= 2, SEEN


@pytest.mark.parametrize("route", [OPENAI, ANTHROPIC])
def test_valid_bodies_of_random_shape_are_answered(gw: Gateway, client: httpx.Client,
                                                   route: str) -> None:
    key = {"authorization": f"Bearer {gw.key}"} if route == OPENAI else {"x-api-key": gw.key}

    @settings(max_examples=100, deadline=None)
    @given(body=valid(route))
    def prop(body: dict[str, Any]) -> None:
        resp = client.post(gw.url + route, json=body, headers=key)
        assert resp.status_code == 200, (body, resp.text)
        check(gw, route, resp)

    prop()


@pytest.mark.parametrize("route", [OPENAI, ANTHROPIC])
def test_random_bytes_never_500(gw: Gateway, client: httpx.Client, route: str) -> None:
    @settings(max_examples=60, deadline=None)
    @given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
    def prop(raw: bytes) -> None:
        resp = client.post(gw.url + route, content=raw, headers={
            "content-type": "application/json", "authorization": f"Bearer {gw.key}",
            "x-api-key": gw.key})
        check(gw, route, resp)

    prop()
