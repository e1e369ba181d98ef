"""Traces over real OTLP/HTTP: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, what ``shoal run``
wraps a run in (``observing``) exports the run's spans as protobuf to a collector (here a
threaded HTTP server in the test, on a free port, stopped by the test)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from shoal.agents import Agent
from shoal.config import Config
from shoal.flows.flow import Flow
from shoal.observe.session import observing
from shoal.sim import SimConfig, SimServer
from shoal.traffic.router import Router


class Collector(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bodies: list[tuple[str, bytes]] = []


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        assert isinstance(self.server, Collector)
        self.server.bodies.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


async def test_otel_environment_exports_the_run_over_otlp_http(
    collector: Collector, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT",
                       f"http://127.0.0.1:{collector.server_address[1]}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "traces-test")
    async with SimServer(SimConfig()) as sim:
        config = Config.from_dict({
            "channels": {"sim": {"protocol": "openai", "base_url": sim.url + "/v1",
                                 "api_key": "sk-test", "provider": "openai"}},
            "models": {"m": {"channels": ["sim"], "input": 1.0, "output": 2.0}}})
        async with Router(config) as router, observing(router) as state:
            assert state.tracing is not None
            flow = Flow("otlp")
            flow.add(Agent("a", model="m"))
            result = await flow.run("x", client=router)
    assert result.status == "succeeded"
    assert [path for path, _ in collector.bodies] == ["/v1/traces"]
    sent = ExportTraceServiceRequest.FromString(collector.bodies[0][1])
    (resource_spans,) = sent.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "traces-test"
    names = sorted(s.name for scope in resource_spans.scope_spans for s in scope.spans)
    assert names == ["chat m", "invoke_agent a", "run otlp", "step a"]


async def test_no_otel_environment_no_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                 "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    router = Router(Config.from_dict({"channels": {}, "models": {}}))
    async with router, observing(router) as state:
        assert state.tracing is None
        assert not router.events.active
