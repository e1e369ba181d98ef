"""What both protocols' request readers share: the parsed result and typed field access
that fails with a :class:`~shoal.gateway.errors.BadInput` naming the field's path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoal.gateway.errors import BadInput
from shoal.types import ChatRequest

__all__ = ["Fields", "Parsed", "type_name"]


@dataclass(slots=True)
class Parsed:
    """A caller's request in shoal's neutral types, and what only the gateway needs.

    ``passthrough`` holds protocol-only fields (``frequency_penalty``, ``top_k``, ...):
    sent as the request's ``extra`` only when every channel that may serve the model
    speaks the caller's protocol (another protocol would refuse them). ``names``: the
    caller's name of a neutral field where it differs (``thinking`` sent as
    ``reasoning_effort``, ``max_tokens`` as ``max_completion_tokens``; ``tools[]``: the
    path of a tool's schema, ``{}`` for its index), for the ``param`` of an error
    about it.
    """

    request: ChatRequest
    stream: bool = False
    include_usage: bool = False
    passthrough: dict[str, Any] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)

    def param(self, neutral: str) -> str:
        """The caller's name of the neutral field ``neutral`` (``tools[2]``: that
        tool's schema)."""
        if neutral.startswith("tools[") and "tools[]" in self.names:
            return self.names["tools[]"].format(neutral[6:-1])
        return self.names.get(neutral, neutral)


def type_name(value: Any) -> str:
    """JSON's name for the type of ``value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class Fields:
    """Typed reads of one JSON object at ``path`` (``messages[2]``); missing optional
    fields and JSON ``null`` read as None."""

    __slots__ = ("data", "path")

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise BadInput(f"{path or 'the request body'}: expected an object, got "
                           f"{type_name(data)}", param=path or None)
        self.data: dict[str, Any] = data
        self.path = path

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def bad(self, key: str, expected: str) -> BadInput:
        value = self.data.get(key)
        return BadInput(f"{self.where(key)}: expected {expected}, got {type_name(value)}",
                        param=self.where(key))

    def need(self, key: str) -> Any:
        value = self.data.get(key)
        if value is None:
            raise BadInput(f"{self.where(key)} is required", param=self.where(key))
        return value

    def string(self, key: str, *, required: bool = False) -> str | None:
        value = self.need(key) if required else self.data.get(key)
        if value is None or isinstance(value, str):
            return value
        raise self.bad(key, "a string")

    def integer(self, key: str, *, required: bool = False) -> int | None:
        value = self.need(key) if required else self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                isinstance(value, float) and not value.is_integer()):
            raise self.bad(key, "an integer")
        return int(value)

    def number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.bad(key, "a number")
        return float(value)

    def boolean(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None or isinstance(value, bool):
            return value
        raise self.bad(key, "true or false")

    def array(self, key: str, *, required: bool = False) -> list[Any] | None:
        value = self.need(key) if required else self.data.get(key)
        if value is None or isinstance(value, list):
            return value
        raise self.bad(key, "an array")

    def obj(self, key: str) -> Fields | None:
        value = self.data.get(key)
        return None if value is None else Fields(value, self.where(key))

    def mapping(self, key: str) -> dict[str, Any] | None:
        value = self.data.get(key)
        if value is None or isinstance(value, dict):
            return value
        raise self.bad(key, "an object")

    def str_list(self, key: str) -> list[str] | None:
        """A string or an array of strings, as a list."""
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise self.bad(key, "a string or an array of strings")

    def metadata(self, key: str) -> dict[str, str]:
        raw = self.mapping(key) or {}
        return {str(k): v for k, v in raw.items() if isinstance(v, str)}
