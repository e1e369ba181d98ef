"""``SimServer``: the simulator as an aiohttp server you start in-process or from the CLI.

Routes:
  * ``POST /v1/chat/completions`` (OpenAI protocol; also ``/chat/completions``)
  * ``POST /v1/messages`` (Anthropic protocol)
  * the same under ``/style/<name>/`` to imitate that provider style for one route
  * ``GET /v1/models``
  * control: ``GET /_sim/stats`` (``?log=0`` drops the per-request log, ``?last=N``
    keeps its last N entries), ``POST /_sim/reset``, ``GET|POST /_sim/config``,
    ``POST /_sim/script``, ``GET /_sim/health``
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from shoal.clock import Clock, RealClock
from shoal.errors import ConfigError
from shoal.sim.config import SimConfig, check_fault
from shoal.sim.engine import SimEngine
from shoal.sim.stats import SimStats

__all__ = ["SimServer"]


class SimServer:
    """A simulated model provider speaking the OpenAI and Anthropic wire protocols.

    ``async with SimServer(cfg) as sim:`` (or ``await sim.start()`` / ``await sim.stop()``);
    ``sim.url`` is the base URL (OpenAI SDK: ``sim.url + "/v1"``; Anthropic SDK: ``sim.url``).
    Stopping ends hung requests, closes every connection and cancels handlers that do not
    finish within ``shutdown_timeout`` seconds.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
        shutdown_timeout: float = 0.5,
    ) -> None:
        self._config = config or SimConfig()
        self._host = host
        self._port = port
        self._shutdown_timeout = shutdown_timeout
        self._engine = SimEngine(self._config, clock or RealClock())
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving (port 0 picks a free port; read it from ``url``/``port``)."""
        if self._runner is not None:
            raise ConfigError("SimServer is already running; stop() it before starting again")
        self._engine.stopping = asyncio.Event()
        runner = web.AppRunner(
            self._app(),
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout,
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"the simulator cannot listen on {self._host}:{self._port}: {exc.strerror}; "
                "pick another --port (0 = any free port)"
            ) from exc
        self._runner = runner
        addresses = runner.addresses
        self._bound_port = int(addresses[0][1]) if addresses else self._port

    async def stop(self) -> None:
        """Stop serving and close everything; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._engine.stopping is not None:
            self._engine.stopping.set()
        await runner.cleanup()

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise ConfigError("SimServer has no port yet: await sim.start() first")
        return self._bound_port

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (no trailing slash, no ``/v1``)."""
        host = self._host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def base_url(self, style: str | None = None, *, protocol: str = "openai") -> str:
        """The base URL a client of *protocol* (``"openai"``: ends in ``/v1``;
        ``"anthropic"``: without it) uses to get *style* (None: the server's style),
        e.g. ``sim.base_url("deepseek")`` = ``http://127.0.0.1:PORT/style/deepseek/v1``."""
        from shoal.sim.config import STYLES

        if protocol not in ("openai", "anthropic"):
            raise ConfigError(f"protocol must be 'openai' or 'anthropic', got {protocol!r}")
        if style is not None and style not in STYLES:
            raise ConfigError(f"unknown simulator style {style!r}; use one of {', '.join(STYLES)}")
        root = self.url if style is None else f"{self.url}/style/{style}"
        return root + "/v1" if protocol == "openai" else root

    # -- control ----------------------------------------------------------------------------

    @property
    def config(self) -> SimConfig:
        return self._engine.config

    def stats(self, *, log: bool = True) -> SimStats:
        """A snapshot of the counters (and, unless ``log=False``, the per-request log)."""
        return self._engine.stats.snapshot(log=log)

    def tags(self) -> list[str | None]:
        """The ``tag`` of each logged request, in arrival order: the step or agent shoal
        named in the request's metadata (None where it named none)."""
        return [r.tag for r in self.stats().requests]

    def reset_stats(self) -> None:
        """Zero the counters and the log (requests in flight stay counted as in flight)."""
        self._engine.stats.reset(self._engine.config.log_size)

    def configure(self, **changes: Any) -> SimConfig:
        """Change settings live (same names as ``SimConfig``; dicts are fine for
        ``faults``/``models``). ``faults`` given as a dict updates only the named fields."""
        config = SimConfig.from_dict(changes, base=self._engine.config)
        self._engine.apply(config, fresh=False)
        return config

    def script(self, faults: Iterable[str]) -> None:
        """Queue faults for the next requests, one per request, in order (``"ok"`` = none)."""
        names = [check_fault(str(f).strip()) for f in faults]
        self._engine.script.extend(names)

    def clear_script(self) -> None:
        self._engine.script.clear()

    @property
    def scripted(self) -> list[str]:
        """Faults still queued."""
        return list(self._engine.script)

    # -- HTTP -------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        engine = self._engine
        app.router.add_post("/v1/chat/completions", engine.handle_openai)
        app.router.add_post("/chat/completions", engine.handle_openai)
        app.router.add_post("/v1/messages", engine.handle_anthropic)
        # Per-route provider style: /style/<name>/v1/... (see shoal.sim.styles).
        app.router.add_post("/style/{style}/v1/chat/completions", engine.handle_openai)
        app.router.add_post("/style/{style}/chat/completions", engine.handle_openai)
        app.router.add_post("/style/{style}/v1/messages", engine.handle_anthropic)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_sim/stats", self._http_stats)
        app.router.add_post("/_sim/reset", self._http_reset)
        app.router.add_get("/_sim/config", self._http_config)
        app.router.add_post("/_sim/config", self._http_config)
        app.router.add_post("/_sim/script", self._http_script)
        app.router.add_get("/_sim/health", self._http_health)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        names = [m for m in self._engine.config.models if "*" not in m and "?" not in m]
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "shoal-sim"} for m in names]
        return web.json_response({"object": "list", "data": data})

    async def _http_stats(self, request: web.Request) -> web.Response:
        want_log = request.query.get("log", "1") not in ("0", "false", "no")
        snapshot = self.stats(log=want_log)
        last = request.query.get("last")
        if want_log and last is not None and last.isdigit():
            keep = int(last)
            requests = snapshot.requests[-keep:] if keep else ()
            snapshot = dataclasses.replace(snapshot, requests=requests)
        return web.json_response(snapshot.to_json(log=want_log))

    async def _http_reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        self.clear_script()
        return web.json_response({"ok": True})

    async def _http_config(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                changes = json.loads(await request.read() or b"{}")
            except ValueError as exc:
                return _control_error(f"POST /_sim/config: bad JSON: {exc}")
            if not isinstance(changes, dict):
                return _control_error("POST /_sim/config takes a JSON object of settings")
            try:
                self.configure(**changes)
            except ConfigError as exc:
                return _control_error(str(exc))
        return web.json_response(self._engine.config.to_dict())

    async def _http_script(self, request: web.Request) -> web.Response:
        try:
            names = json.loads(await request.read() or b"[]")
        except ValueError as exc:
            return _control_error(f"POST /_sim/script: bad JSON: {exc}")
        if not isinstance(names, list):
            return _control_error('POST /_sim/script takes a JSON list such as ["429", "ok"]')
        try:
            self.script(names)
        except ConfigError as exc:
            return _control_error(str(exc))
        return web.json_response({"queued": self.scripted})

    async def _http_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})


def _control_error(message: str) -> web.Response:
    body = {"error": {"message": message, "type": "sim_config_error"}}
    return web.json_response(body, status=400)
