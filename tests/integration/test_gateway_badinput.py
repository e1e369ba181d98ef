"""Bad input against a real ``shoal gateway`` process (simulator upstream, real virtual
keys): each answer is a clear 4xx in the caller's protocol envelope, never a 5xx, and
echoes no secret (the virtual keys, the upstream key). A client that walks away from a
stream frees its slot at once and the gateway keeps serving."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_procs import (
    MAX_BODY,
    Gateway,
    check_envelope,
    check_no_secret,
    running_gateway,
)

pytestmark = pytest.mark.timeout(120)

OPENAI = "/v1/chat/completions"
ANTHROPIC = "/v1/messages"
ROUTES = (OPENAI, ANTHROPIC)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("gw-badinput")) as gateway:
        yield gateway


def good_body(route: str, **extra: Any) -> dict[str, Any]:
    if route == ANTHROPIC:
        return {"model": "claude-test", "max_tokens": 32,
                "messages": [{"role": "user", "content": "hello"}], **extra}
    return {"model": "gpt-test", "messages": [{"role": "user", "content": "hello"}], **extra}


def post(gw: Gateway, route: str, *, content: bytes | None = None,
         body: Any = None, key: str | None = "use-gw", **headers: str) -> httpx.Response:
    hdrs = {"content-type": "application/json", **headers}
    if key == "use-gw":
        key = gw.key
    if key is not None:
        hdrs["authorization" if route == OPENAI else "x-api-key"] = (
            f"Bearer {key}" if route == OPENAI else key)
    if route == ANTHROPIC:
        hdrs.setdefault("anthropic-version", "2023-06-01")
    data = content if content is not None else json.dumps(body).encode()
    return httpx.post(gw.url + route, content=data, headers=hdrs, timeout=30)


def refused(gw: Gateway, route: str, resp: httpx.Response, status: int | tuple[int, ...],
            mentions: str | None = None) -> dict[str, Any]:
    """A clear refusal: the expected 4xx, the route's envelope, no secret."""
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, (resp.status_code, resp.text)
    err = check_envelope(route, resp)
    check_no_secret(gw, resp)
    if mentions is not None:
        assert re.search(mentions, err["message"], re.I), err["message"]
    return err


def test_the_good_body_is_answered(gw: Gateway) -> None:
    for route in ROUTES:
        resp = post(gw, route, body=good_body(route))
        assert resp.status_code == 200, resp.text
        check_no_secret(gw, resp)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("raw", [b"{", b"not json", b'{"model": "gpt-test",}', b"\xff\xfe",
                                 b""])
def test_malformed_json_is_a_400_saying_so(gw: Gateway, route: str, raw: bytes) -> None:
    refused(gw, route, post(gw, route, content=raw), 400, r"json|empty")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("change", [
    {"messages": "hello"},
    {"messages": [{"role": "user", "content": 42}]},
    {"messages": [{"role": "wizard", "content": "hi"}]},
    {"messages": []},
    {"model": 42},
    {"model": None},
    {"max_tokens": "many"},
    {"max_tokens": -5},
    {"stream": "yes"},
    {"temperature": "hot"},
    {"tools": "all of them"},
])
def test_wrong_types_are_a_400_naming_the_field(gw: Gateway, route: str,
                                                change: dict[str, Any]) -> None:
    body = {**good_body(route), **change}
    err = refused(gw, route, post(gw, route, body=body), (400, 404, 422))
    field = next(iter(change))
    assert field in err["message"] or err.get("param") == field or field == "model", err


def test_stream_options_without_stream_is_a_400_as_openai_answers(gw: Gateway) -> None:
    body = good_body(OPENAI, stream_options={"include_usage": True})
    err = refused(gw, OPENAI, post(gw, OPENAI, body=body), 400, "only allowed when stream")
    assert err.get("param") == "stream_options"


@pytest.mark.parametrize("config", [
    {"format": {"type": "xml"}},
    {"format": {"type": "json_schema"}},
    {"effort": "ludicrous"},
    "fast",
])
def test_a_bad_anthropic_output_config_is_a_400_naming_it(gw: Gateway, config: Any) -> None:
    route = "/v1/messages"
    body = {**good_body(route), "output_config": config}
    err = refused(gw, route, post(gw, route, body=body), (400,))
    assert "output_config" in err["message"], err


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("top", [[], "text", 3, None])
def test_a_body_that_is_not_an_object_is_a_400(gw: Gateway, route: str, top: Any) -> None:
    refused(gw, route, post(gw, route, body=top), 400)


@pytest.mark.parametrize("route", ROUTES)
def test_unknown_model_names_it(gw: Gateway, route: str) -> None:
    body = good_body(route, model="no-such-model-xyz")
    refused(gw, route, post(gw, route, body=body), (400, 404), "no-such-model-xyz")


@pytest.mark.parametrize("route", ROUTES)
def test_oversized_body_is_a_413(gw: Gateway, route: str) -> None:
    body = good_body(route)
    body["messages"][0]["content"] = "x" * (MAX_BODY + 1)
    refused(gw, route, post(gw, route, body=body), 413, r"limit|large|bytes")


def test_oversized_body_without_content_length_is_a_413(gw: Gateway) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "gpt-test", "messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"x" * 1024
        yield b'"}]}'

    resp = httpx.post(gw.url + OPENAI, content=chunks(), timeout=30, headers={
        "authorization": f"Bearer {gw.key}", "content-type": "application/json"})
    refused(gw, OPENAI, resp, 413)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("who", ["missing", "invalid", "revoked"])
def test_bad_keys_are_a_401_in_the_protocol(gw: Gateway, route: str, who: str) -> None:
    key = {"missing": None, "invalid": "sk-shoal-not-a-real-key-000000000000000000000",
           "revoked": gw.revoked_key}[who]
    resp = post(gw, route, body=good_body(route), key=key)
    err = refused(gw, route, resp, 401)
    if route == OPENAI:
        assert err["type"] in {"invalid_request_error", "authentication_error"}, err
    else:
        assert err["type"] == "authentication_error", err
    assert key is None or key not in resp.text


def test_a_key_in_the_wrong_header_shape_is_still_a_clean_401(gw: Gateway) -> None:
    for value in ("Bearer", "Basic Zm9vOmJhcg==", "Bearer a b", "sk-only-no-scheme"):
        resp = httpx.post(gw.url + OPENAI, json=good_body(OPENAI), timeout=30,
                          headers={"authorization": value})
        refused(gw, OPENAI, resp, 401)


def test_unknown_route_and_method_answer_in_an_envelope(gw: Gateway) -> None:
    resp = httpx.post(gw.url + "/v1/completions", json={}, timeout=30)
    refused(gw, OPENAI, resp, (404, 405))
    resp = httpx.get(gw.url + ANTHROPIC, timeout=30, headers={"anthropic-version": "x"})
    refused(gw, ANTHROPIC, resp, (404, 405))


def _in_flight(gw: Gateway) -> float:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("shoal_gateway_in_flight{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("route", ROUTES)
def test_a_client_that_leaves_mid_stream_frees_its_slot(gw: Gateway, route: str) -> None:
    body = good_body(route, stream=True, model="gpt-slow", max_tokens=200)
    headers = {"authorization": f"Bearer {gw.key}", "x-api-key": gw.key,
               "content-type": "application/json", "anthropic-version": "2023-06-01"}
    payload = json.dumps(body).encode()
    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {route} HTTP/1.1\r\nhost: {host}\r\ncontent-length: "
                     f"{len(payload)}\r\n".encode()
                     + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
                     + b"\r\n" + payload)
        seen = b""
        while b"data:" not in seen:  # the stream has started
            chunk = sock.recv(4096)
            assert chunk, seen
            seen += chunk
        assert seen.startswith(b"HTTP/1.1 200"), seen[:200]
        assert _in_flight(gw) >= 1
    # The 200-token stream would run ~10 s more; walking away frees the slot at once.
    deadline = time.monotonic() + 5
    while _in_flight(gw) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _in_flight(gw) == 0
    resp = post(gw, route, body=good_body(route))
    assert resp.status_code == 200, resp.text


def test_the_access_log_holds_no_secret(gw: Gateway) -> None:
    post(gw, OPENAI, body=good_body(OPENAI))
    log = Path(gw.log).read_text(errors="replace")
    assert '"status":' in log or "status" in log
    for secret in gw.secrets():
        assert secret not in log


def test_the_access_log_names_an_unknown_model_as_asked_and_never_a_secret(
        gw: Gateway) -> None:
    asked = "gpt-4x-turbo-typo"
    assert post(gw, OPENAI, body={**good_body(OPENAI), "model": asked}).status_code == 404
    secret = gw.secrets()[0]  # a caller who pastes a key where the model goes
    assert post(gw, OPENAI, body={**good_body(OPENAI), "model": secret}).status_code == 404
    lines = [json.loads(ln) for ln in Path(gw.log).read_text().splitlines()
             if ln.startswith("{") and '"route"' in ln]
    unknown = [ln for ln in lines if ln.get("status") == 404]
    assert {"model": "", "asked_model": asked}.items() <= unknown[-2].items()
    assert unknown[-1]["model"] == "" and secret not in unknown[-1]["asked_model"]
    assert secret not in Path(gw.log).read_text(errors="replace")
