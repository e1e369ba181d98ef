"""A minimal, fast OpenAI-wire upstream for the gateway benchmarks.

Raw asyncio protocol on uvloop (no framework): HTTP/1.1 keep-alive, ``POST`` to any path
answers a fixed ``chat.completion`` after ``--latency-ms``; a body with ``"stream": true``
answers ``--chunks`` SSE ``chat.completion.chunk`` events, one every ``--chunk-ms`` (the
first after ``--latency-ms``), then a usage chunk and ``data: [DONE]``. ``GET`` answers
the model list (health checks). Each request costs the mock a few microseconds of CPU, so
on its own core it is never the bottleneck of the gateway benches.

    python bench/gateway_mock.py --port 9100 --latency-ms 20
    python bench/gateway_mock.py --port 9101 --chunks 64 --chunk-ms 20

It prints ``READY <port>`` on stdout once listening and stops when stdin closes (or on
SIGTERM/SIGINT), so a parent that dies takes it along.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any, cast

MODEL = "gpt-4o-mini"
_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-mock",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": MODEL,
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": "Open weights trade fees for hardware risk."},
        "logprobs": None,
        "finish_reason": "stop",
    }],
    "usage": {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40},
}
_MODELS = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "mock"}]}


def _response(status: str, ctype: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + ctype
            + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk holding one SSE event."""
    event = b"data: " + data + b"\n\n"
    return f"{len(event):x}\r\n".encode() + event + b"\r\n"


class Mock:
    """The answers, pre-encoded once."""

    def __init__(self, latency_ms: float, chunks: int, chunk_ms: float) -> None:
        self.latency_s = latency_ms / 1000
        self.chunk_s = chunk_ms / 1000
        self.chunks = chunks
        self.completion = _response("200 OK", b"application/json",
                                    json.dumps(_COMPLETION, separators=(",", ":")).encode())
        self.models = _response("200 OK", b"application/json", json.dumps(_MODELS).encode())
        self.stream_head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
        base = {"id": "chatcmpl-mock", "object": "chat.completion.chunk",
                "created": 1_700_000_000, "model": MODEL}
        self.first = _chunk(json.dumps({**base, "choices": [{
            "index": 0, "delta": {"role": "assistant", "content": "tok "},
            "finish_reason": None}]}, separators=(",", ":")).encode())
        self.middle = _chunk(json.dumps({**base, "choices": [{
            "index": 0, "delta": {"content": "tok "}, "finish_reason": None}]},
            separators=(",", ":")).encode())
        self.tail = (_chunk(json.dumps({**base, "choices": [{
            "index": 0, "delta": {}, "finish_reason": "stop"}]},
            separators=(",", ":")).encode())
            + _chunk(json.dumps({**base, "choices": [], "usage": {
                "prompt_tokens": 31, "completion_tokens": chunks,
                "total_tokens": 31 + chunks}}, separators=(",", ":")).encode())
            + _chunk(b"[DONE]") + b"0\r\n\r\n")


class MockProtocol(asyncio.Protocol):
    """One keep-alive connection; requests are answered in order."""

    def __init__(self, mock: Mock) -> None:
        self.mock = mock
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a streamed answer is in progress: hold later requests
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        while self.transport is not None and not self.busy:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            i = head.find(b"content-length:")
            if i >= 0:
                j = head.find(b"\r\n", i)
                length = int(head[i + 15:j if j > 0 else len(head)])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            if head.startswith(b"get"):
                self.transport.write(self.mock.models)
            elif b'"stream":true' in body.replace(b" ", b""):
                self.busy = True
                self.loop.create_task(self._stream())
            elif self.mock.latency_s > 0:
                self.busy = True
                self.loop.call_later(self.mock.latency_s, self._answer)
            else:
                self.transport.write(self.mock.completion)

    def _write(self, data: bytes) -> bool:
        """Write when still connected (the client may have gone during a sleep)."""
        if self.transport is None:
            return False
        self.transport.write(data)
        return True

    def _answer(self) -> None:
        self.busy = False
        if self.transport is not None:
            self.transport.write(self.mock.completion)
            self._next()

    async def _stream(self) -> None:
        mock = self.mock
        if mock.latency_s > 0:
            await asyncio.sleep(mock.latency_s)
        if self.transport is None:
            return
        self.transport.write(mock.stream_head + mock.first)
        for _ in range(mock.chunks - 1):
            await asyncio.sleep(mock.chunk_s)
            if not self._write(mock.middle):
                return
        if not self._write(mock.tail):
            return
        self.busy = False
        self._next()


async def serve(port: int, mock: Mock) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: MockProtocol(mock), "127.0.0.1", port,
                                      backlog=4096, reuse_address=True)
    sock_port = server.sockets[0].getsockname()[1]
    print(f"READY {sock_port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Stop when the parent closes our stdin (a pipe). A regular file cannot be watched
    # (EPERM): then SIGTERM/SIGINT alone stop us.
    with contextlib.suppress(OSError):
        loop.add_reader(sys.stdin.fileno(),
                        lambda: stop.set() if not sys.stdin.read(1) else None)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--chunk-ms", type=float, default=20.0)
    args = parser.parse_args()
    mock = Mock(args.latency_ms, args.chunks, args.chunk_ms)
    import uvloop  # a shoal dependency (not on Windows)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.port, mock))


if __name__ == "__main__":
    main()
