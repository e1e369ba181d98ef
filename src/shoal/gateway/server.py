"""Running the gateway: one process, or N sharing the port (SO_REUSEPORT), each with its
own Router; and the graceful stop.

SIGTERM (or SIGINT): the listening socket closes at once, requests and streams in
flight get up to ``drain_timeout_s`` to finish, whatever is left is cancelled (its
upstream call with it), every key grant is settled, then the Router and the key store
close. No spend record is lost on the way; if the key store refuses them even then,
the gateway says so and exits 1.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, TextIO

from aiohttp import web

from shoal.errors import ConfigError, StoreError
from shoal.gateway.app import build_app
from shoal.gateway.calls import Gateway
from shoal.gateway.keys_api import KeyService, OpenKeys
from shoal.gateway.settings import GatewaySettings, is_loopback
from shoal.gateway.worker_limits import split_channels, split_notice, workers_need_redis
from shoal.gc_tune import freeze_built

if TYPE_CHECKING:
    from shoal.config import Config
    from shoal.traffic.router import Router

__all__ = ["GatewayServer", "open_keys", "run", "serve"]



class GatewayServer:
    """A gateway listening on ``settings.host:settings.port`` (0: a free port) until
    :meth:`stop` (which drains). ``async with GatewayServer(router, keys, settings)``."""

    def __init__(self, router: Router, keys: KeyService | None = None,
                 settings: GatewaySettings | None = None, *, reuse_port: bool = False) -> None:
        self.settings = settings or GatewaySettings(port=0)
        keys = keys or OpenKeys()
        if not keys.required and not is_loopback(self.settings.host):
            raise ConfigError(
                f"refusing to serve on {self.settings.host} without virtual keys: anyone who "
                "can reach it could spend through every channel. Create a key "
                "(shoal keys create --name ...) or bind to 127.0.0.1")
        self.gateway = Gateway(router, keys, self.settings)
        self._reuse_port = reuse_port
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        host = self.settings.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host
                                                            else host)
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        app = build_app(self.gateway)
        _mount_key_admin(app, self.gateway.keys, self.gateway.router.config)
        runner = web.AppRunner(app, handler_cancellation=True,
                               shutdown_timeout=self.settings.drain_timeout_s,
                               access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port, backlog=1024,
                           reuse_port=self._reuse_port or None)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self.port = int(address[1])

    async def stop(self) -> None:
        """Stop accepting, drain in-flight calls up to the deadline, settle, close."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.gateway.draining = True
        await runner.cleanup()

    async def __aenter__(self) -> GatewayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _mount_key_admin(app: web.Application, keys: KeyService, config: Config) -> None:
    """``/admin/keys`` (guarded by ``SHOAL_ADMIN_KEY``) when keys come from a store; a new
    key's models are checked against ``config``, the models this gateway serves."""
    if not keys.required:
        return
    from shoal.gateway.keys import StoreKeys
    from shoal.gateway.keys_admin import add_key_admin

    if isinstance(keys, StoreKeys):
        add_key_admin(app, keys, config=config)


async def open_keys(config: Config, store: str | None) -> KeyService:
    """Virtual keys from the store when it holds any; else no keys until the first one is
    created (:class:`~shoal.gateway.keys_watch.WatchedKeys`: the gateway then asks every
    caller for a key without a restart)."""
    from shoal.gateway.keys_watch import WatchedKeys
    from shoal.stores import DEFAULT_URL, missing_sqlite_file

    url = store or DEFAULT_URL
    if missing_sqlite_file(url) is not None:  # the file, whatever ?options follow it
        return WatchedKeys(url, redis=config.redis_url)  # no store yet: no key created
    from shoal.gateway.keys import StoreKeys

    keys = StoreKeys(url, redis=config.redis_url)
    try:
        active = await keys.active_keys()
    except BaseException:
        await keys.aclose()
        raise
    if active:
        return keys
    await keys.aclose()
    return WatchedKeys(url, redis=config.redis_url)


async def serve(config: Config, settings: GatewaySettings, *, store: str | None = None,
                reuse_port: bool = False) -> None:
    """Serve until SIGTERM/SIGINT, print one ``listening on`` line first, then drain."""
    from shoal.traffic.router import Router

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    keys = await open_keys(config, store)
    router = Router(config)
    try:
        server = GatewayServer(router, keys, settings, reuse_port=reuse_port)
        await server.start()
    except BaseException:  # refused (no keys off loopback) or the port is taken
        await router.aclose()
        await keys.aclose()
        raise
    freeze_built()  # the server as built, over the loop's start-up freeze
    mode = "virtual keys" if keys.required else "no keys (loopback only)"
    say(f"shoal gateway listening on {server.url} (pid {os.getpid()}, {mode})", sys.stdout)
    await stop.wait()
    say(f"shoal gateway draining (up to {settings.drain_timeout_s:g}s)", sys.stderr)
    await server.stop()  # settles every call, then closes the keys: spend is written
    say("shoal gateway stopped", sys.stderr)
    if lost := server.gateway.keys.lost_spend:
        raise StoreError(
            f"virtual keys: {lost} spend record(s) lost at shutdown: calls this gateway "
            "answered are missing from their keys' spend (`shoal keys show` undercounts "
            "them). Check the key store; the gateway's log above has the store's error")


def say(line: str, stream: TextIO) -> None:
    """Write ``line`` and its newline in one write, flushed. ``print`` writes the newline
    separately, and with unbuffered output (``PYTHONUNBUFFERED=1``, common in containers)
    the workers sharing one stdout interleaved their start-up lines: "A-lineB-line", then
    an empty line."""
    stream.write(line + "\n")
    stream.flush()


def _worker(index: int, config_path: str | None, settings: dict[str, Any],
            store: str | None) -> None:
    from shoal.cli.loop import run as run_loop
    from shoal.config import Config
    from shoal.gateway.access_log import configure_access_log

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards SIGTERM
    gateway_settings = GatewaySettings(**settings)
    config = split_channels(Config.load(config_path), index, gateway_settings.workers)
    configure_access_log(gateway_settings.access_log)  # a spawned process starts bare
    try:
        run_loop(serve(config, gateway_settings, store=store, reuse_port=True))
    except StoreError as exc:  # spend lost at shutdown: say so, exit 1 (the parent too)
        from shoal.secrets import redact

        say(f"error: {redact(str(exc))}", sys.stderr)
        raise SystemExit(1) from None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def run(config: Config, settings: GatewaySettings, *, config_path: str | None = None,
        store: str | None = None) -> None:
    """``shoal gateway``: one process (``workers = 1``) or N sharing the port."""
    from shoal.cli.loop import run as run_loop

    if settings.workers == 1:
        run_loop(serve(config, settings, store=store))
        return
    # Checked here, once, before any worker starts: limits that would multiply. Per-key
    # limits need Redis whether or not a key exists yet (keys created later are asked
    # for without a restart); channel limits are split when not shared (split_notice).
    workers_need_redis(settings.workers, config.redis_url)
    notice = split_notice(config, settings.workers)
    if notice is not None:
        print(notice, file=sys.stderr, flush=True)
    if settings.port == 0:
        settings = settings.model_copy(update={"port": _free_port(settings.host)})
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, name=f"shoal-gateway-{i}",
                         args=(i, config_path, settings.model_dump(), store))
             for i in range(settings.workers)]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise SystemExit(1)
