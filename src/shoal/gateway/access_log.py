"""One JSON line per request on the ``shoal.gateway.access`` logger.

Fields: ``ts``, ``method``, ``route``, ``status``, ``duration_ms``, ``model``, ``key``
(the virtual key's id), ``stream``, ``input_tokens``, ``output_tokens``, ``cost_usd``,
``error`` (the failure kind), on a broken stream ``stream_error``, and for a model the
gateway does not serve, ``asked_model`` (the name the caller sent, cut to 120
characters; ``model`` is then empty). Never prompts, answers or any key's secret.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from shoal.fastjson import dumps
from shoal.secrets import redact

__all__ = ["AccessRecord", "configure_access_log", "emit", "log"]

log = logging.getLogger("shoal.gateway.access")
_INFO = logging.INFO

_ASKED_MAX = 120


@dataclass(slots=True)
class AccessRecord:
    """What one request did, filled in as it goes."""

    method: str
    route: str
    started: float
    status: int = 0
    model: str = ""
    asked: str = ""  # the model as the caller named it, logged when it is not one served
    key: str = ""
    stream: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    stream_error: bool = False

    def line(self, duration_s: float) -> str:
        fields: dict[str, object] = {
            "ts": round(time.time(), 3), "method": self.method, "route": self.route,
            "status": self.status, "duration_ms": round(duration_s * 1000, 3),
            "model": self.model, "key": self.key, "stream": self.stream,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 8),
        }
        if not self.model and self.asked:
            # Caller-written: cut short, and never a secret shoal holds (metrics keep
            # "unknown" for it: a label must not take any string a caller sends).
            fields["asked_model"] = redact(self.asked[:_ASKED_MAX])
        if self.error is not None:
            fields["error"] = self.error
        if self.stream_error:
            fields["stream_error"] = True
        return dumps(fields).decode()


class _Bare(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_access_log` sets: each line bare, on stderr."""


_BARE = logging.Formatter("%(message)s")


def configure_access_log(enabled: bool) -> None:
    """Send access lines, bare, to stderr (``shoal gateway``); off: drop them."""
    log.propagate = False
    log.handlers.clear()
    if enabled:
        handler = _Bare(sys.stderr)
        handler.setFormatter(_BARE)
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    else:
        log.setLevel(logging.CRITICAL + 1)


def emit(line: str) -> None:
    """Log one access line (the caller checked ``log.isEnabledFor(INFO)``). While the
    logger is as :func:`configure_access_log` left it (its one bare handler, nothing
    else attached, no filter), the line goes straight to that handler's stream: the same
    bytes, flushed, under the handler's lock, without a ``LogRecord`` and the caller's
    stack walk (~6 µs a line); otherwise, or if the write fails, through ``logging``."""
    handlers = log.handlers
    if (len(handlers) == 1 and type(handler := handlers[0]) is _Bare
            and not log.filters and not log.disabled and not log.propagate
            and not handler.filters and handler.level <= _INFO
            and handler.formatter is _BARE):
        handler.acquire()
        try:
            stream = handler.stream
            stream.write(line + handler.terminator)
            stream.flush()
        except Exception:  # noqa: S110 - logging then says what failed, as it would have
            pass
        else:
            return
        finally:
            handler.release()
    log.info(line)
