"""JSON instances for a JSON schema: valid ones (structured output, tool arguments) and
deliberately invalid ones (the ``schema_invalid`` fault).

Covers what pydantic and the providers' strict modes emit: ``type`` (also lists),
``enum``/``const``, ``properties``/``required``/``additionalProperties``, ``items``/
``prefixItems``/``minItems``/``maxItems``/``uniqueItems``, string ``format``/
``minLength``/``maxLength``, numeric bounds and ``multipleOf``, ``anyOf``/``oneOf``/
``allOf`` and ``$ref`` into ``$defs``/``definitions``. ``pattern`` is not honoured.
Recursive schemas are cut off: past a depth limit only required fields are filled,
arrays get their minimum length and nullable branches are taken.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from typing import Any

__all__ = ["instance", "schema_in_text", "violation"]

_MAX_DEPTH = 6
_WORDS = (
    "alpha", "bravo", "cedar", "delta", "ember", "fjord", "grove", "harbor",
    "island", "juniper", "kelp", "lagoon", "meadow", "nectar", "orchid", "pebble",
    "quartz", "reef", "summit", "tide", "umber", "valley", "willow", "zephyr",
)  # fmt: skip
_FORMATS = {
    "date-time": "2024-05-17T12:30:00Z",
    "date": "2024-05-17",
    "time": "12:30:00",
    "email": "sim@example.com",
    "idn-email": "sim@example.com",
    "uri": "https://example.com/sim",
    "url": "https://example.com/sim",
    "iri": "https://example.com/sim",
    "uri-reference": "/sim",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "duration": "P1D",
}


_DECODE = json.JSONDecoder().raw_decode


def schema_in_text(text: str, *, tries: int = 64) -> dict[str, Any] | None:
    """The last JSON Schema of an object written out in *text* (a prompt stating the shape
    of the answer, as JSON mode asks), or None. Looks at the last *tries* ``{`` only."""
    at = len(text)
    for _ in range(tries):
        at = text.rfind("{", 0, at)
        if at < 0:
            return None
        try:
            value, _end = _DECODE(text, at)
        except ValueError:
            continue
        if isinstance(value, dict) and value.get("type") == "object" and "properties" in value:
            return value
    return None


def instance(schema: Any, rng: random.Random, root: Any = None) -> Any:
    """A value valid for *schema* (``root`` resolves ``$ref``; defaults to *schema*)."""
    return _Gen(rng, schema if root is None else root).value(schema, 0)


def violation(schema: Any, rng: random.Random, root: Any = None) -> Any:
    """A JSON value that is well formed but NOT valid for *schema*."""
    gen = _Gen(rng, schema if root is None else root)
    resolved = gen.resolve(schema)
    if isinstance(resolved, dict) and _kind(resolved) == "object":
        value = gen.value(resolved, 0)
        if isinstance(value, dict):
            required = [k for k in resolved.get("required", []) if k in value]
            if required:
                del value[required[0]]
                return value
            if resolved.get("additionalProperties") is False:
                value["unexpected_field"] = "sim"
                return value
            props = resolved.get("properties") or {}
            if props:
                name = next(iter(props))
                value[name] = _wrong(gen.resolve(props[name]))
                return value
    return _wrong(resolved)


def _wrong(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return None
    if "enum" in schema or "const" in schema:
        return "__not_an_allowed_value__"
    kind = _kind(schema)
    return {
        "string": 12345,
        "integer": "not a number",
        "number": "not a number",
        "boolean": "maybe",
        "array": "not an array",
        "object": ["not", "an", "object"],
        "null": "not null",
    }.get(kind or "")


def _kind(schema: dict[str, Any]) -> str | None:
    t = schema.get("type")
    if isinstance(t, list):
        non_null = [x for x in t if x != "null"]
        return str(non_null[0]) if non_null else "null"
    if isinstance(t, str):
        return t
    if "properties" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return None


class _Gen:
    def __init__(self, rng: random.Random, root: Any) -> None:
        self.rng = rng
        self.root = root

    def resolve(self, schema: Any) -> Any:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 32:
            target = self._pointer(str(schema["$ref"]))
            extra = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **extra} if extra and isinstance(target, dict) else target
            seen += 1
        return schema

    def _pointer(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}
        node = self.root
        for raw in ref[1:].split("/"):
            if not raw:
                continue
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return {}
        return node

    def value(self, schema: Any, depth: int) -> Any:
        schema = self.resolve(schema)
        if schema is True or schema == {}:
            return self.rng.choice(_WORDS)
        if not isinstance(schema, dict):
            return None
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return self.rng.choice(list(schema["enum"]))
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if options:
                return self.value(self._pick(options, depth), depth + 1)
        if schema.get("allOf"):
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                resolved = self.resolve(part)
                if isinstance(resolved, dict):
                    _merge(merged, resolved)
            return self.value(merged, depth + 1)
        kind = _kind(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "string":
            return self._string(schema)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self.rng.choice(_WORDS)

    def _pick(self, options: list[Any], depth: int) -> Any:
        def is_null(o: Any) -> bool:
            o = self.resolve(o)
            return isinstance(o, dict) and o.get("type") == "null"

        if depth >= _MAX_DEPTH:
            for option in options:
                if is_null(option):
                    return option
        for option in options:
            if not is_null(option):
                return option
        return options[0]

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        props: dict[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        out: dict[str, Any] = {}
        for name, sub in props.items():
            if depth >= _MAX_DEPTH and name not in required:
                continue
            out[name] = self.value(sub, depth + 1)
        extra = schema.get("additionalProperties")
        min_props = int(schema.get("minProperties", 0))
        if not props and isinstance(extra, dict) and depth < _MAX_DEPTH:
            min_props = max(min_props, 1)
        i = 0
        while len(out) < min_props and extra is not False:
            out[f"key{i}"] = self.value(extra if isinstance(extra, dict) else {}, depth + 1)
            i += 1
        return out

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        lo = int(schema.get("minItems", 0))
        hi = schema.get("maxItems")
        n = lo if depth >= _MAX_DEPTH else max(lo, 2)
        if hi is not None:
            n = min(n, int(hi))
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {})
        out: list[Any] = []
        for i in range(max(n, len(prefix) if hi is None else min(len(prefix), int(hi)))):
            sub = prefix[i] if i < len(prefix) else items
            if sub is False:
                break
            out.append(self.value(sub, depth + 1))
        if schema.get("uniqueItems"):
            out = _unique(out)
        return out

    def _string(self, schema: dict[str, Any]) -> str:
        fmt = schema.get("format")
        if fmt == "uuid":
            bits = self.rng.getrandbits(128)
            text = str(uuid.UUID(int=bits, version=4))
        elif isinstance(fmt, str) and fmt in _FORMATS:
            text = _FORMATS[fmt]
        else:
            text = " ".join(self.rng.choice(_WORDS) for _ in range(2))
        lo = int(schema.get("minLength", 0))
        hi = schema.get("maxLength")
        while len(text) < lo:
            text += "x"
        if hi is not None:
            text = text[: int(hi)]
        return text

    def _bounds(self, schema: dict[str, Any], step: float) -> tuple[float, float]:
        lo = float(schema.get("minimum", -math.inf))
        hi = float(schema.get("maximum", math.inf))
        if "exclusiveMinimum" in schema and not isinstance(schema["exclusiveMinimum"], bool):
            lo = max(lo, float(schema["exclusiveMinimum"]) + step)
        if "exclusiveMaximum" in schema and not isinstance(schema["exclusiveMaximum"], bool):
            hi = min(hi, float(schema["exclusiveMaximum"]) - step)
        if lo == -math.inf and hi == math.inf:
            lo, hi = 0.0, 100.0
        elif lo == -math.inf:
            lo = hi - 100.0
        elif hi == math.inf:
            hi = lo + 100.0
        return lo, hi

    def _integer(self, schema: dict[str, Any]) -> int:
        lo, hi = self._bounds(schema, 1.0)
        ilo, ihi = math.ceil(lo), math.floor(hi)
        mult = schema.get("multipleOf")
        if isinstance(mult, int) and mult > 0:
            first = math.ceil(ilo / mult) * mult
            count = max(0, (ihi - first) // mult)
            return int(first + mult * self.rng.randint(0, count))
        return self.rng.randint(ilo, max(ilo, ihi))

    def _number(self, schema: dict[str, Any]) -> float:
        lo, hi = self._bounds(schema, 1e-6)
        mult = schema.get("multipleOf")
        if isinstance(mult, int | float) and mult > 0:
            first = math.ceil(lo / mult) * mult
            count = max(0, math.floor((hi - first) / mult))
            return float(first + mult * self.rng.randint(0, count))
        if hi <= lo:
            return lo
        return min(max(round(self.rng.uniform(lo, hi), 3), lo), hi)


def _merge(into: dict[str, Any], part: dict[str, Any]) -> None:
    for key, val in part.items():
        if key == "properties" and isinstance(into.get(key), dict):
            into[key] = {**into[key], **val}
        elif key == "required" and isinstance(into.get(key), list):
            into[key] = [*into[key], *[r for r in val if r not in into[key]]]
        else:
            into.setdefault(key, val)


def _unique(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for i, value in enumerate(values):
        v = value
        if v in out and isinstance(v, str):
            v = f"{v} {i}"
        elif v in out and isinstance(v, int | float) and not isinstance(v, bool):
            v = v + i
        if v not in out:
            out.append(v)
    return out
