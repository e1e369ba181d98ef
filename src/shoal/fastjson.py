"""JSON for the gateway's request and answer bodies: orjson, with the stdlib behind it.

orjson decodes a chat request and encodes an answer in ~1.6 µs against the stdlib's
~13 µs (docs/DECISIONS.md, gateway server stack). Whatever orjson refuses goes to the
stdlib, so the gateway accepts and refuses what it did with the stdlib alone: a lone
surrogate (``"\\ud800"``, valid JSON that orjson rejects) decodes as before, and
text that is not valid UTF-8 encodes as ASCII escapes instead of failing. ``NaN`` and
``Infinity`` are refused either way (not JSON numbers); deep nesting is a
:class:`RecursionError` from the stdlib, as before. One difference: an integer past 64
bits reads as the nearest float (orjson), not the exact integer.

Output is UTF-8 (orjson's), not ASCII escapes: the same JSON to every parser.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "loads"]

_std_dumps = json.JSONEncoder(separators=(",", ":")).encode
_orjson_loads = orjson.loads
_orjson_dumps = orjson.dumps
_DecodeError = orjson.JSONDecodeError


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads(raw: bytes | str) -> Any:
    """A JSON document; ``ValueError``/``UnicodeDecodeError``/``RecursionError`` (the
    stdlib's, saying what is wrong) when it is not one."""
    try:
        return _orjson_loads(raw)
    except _DecodeError:  # the stdlib decides: lone surrogates are JSON, NaN is not
        return json.loads(raw, parse_constant=_no_constant)


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON bytes."""
    try:
        return _orjson_dumps(value)
    except TypeError:  # a lone surrogate, an int past 64 bits: the stdlib's ASCII escapes
        return _std_dumps(value).encode()
