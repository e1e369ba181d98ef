"""Structured output: the JSON schema asked of the model, and validation of its answer.

``OutputSpec`` is built once per agent from its ``output_type``: ``str`` (plain text,
no schema), a pydantic model, a dataclass or TypedDict (object schemas), or any other
type pydantic can validate (``list[str]``, ``int``, ...), which is wrapped as
``{"result": ...}`` because providers want an object at the top.
"""

from __future__ import annotations

import json
import re
from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError

from shoal.errors import ConfigError
from shoal.providers.profiles import schema_instructions
from shoal.types import Message

__all__ = ["OutputParseError", "OutputSpec", "extract_json"]

T = TypeVar("T")

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_NAME_OK = re.compile(r"[^A-Za-z0-9_-]")


class OutputParseError(ValueError):
    """The model's answer is not valid for the output type; ``str(self)`` says why."""


def extract_json(text: str) -> Any:
    """The JSON value in a model's answer: bare, inside a code fence, or amid prose."""
    stripped = text.strip()
    candidates = [stripped]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(text)]
    for open_ch, close_ch in (("{", "}"), ("[", "]")):
        start, end = stripped.find(open_ch), stripped.rfind(close_ch)
        if 0 <= start < end:
            candidates.append(stripped[start : end + 1])
    for candidate in candidates:
        if not candidate:
            continue
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    raise OutputParseError("the answer is not valid JSON" if stripped else "the answer is empty")


class OutputSpec(Generic[T]):
    """How to ask for, and check, an agent's final output of type ``T``."""

    def __init__(self, output_type: type[T] | Any) -> None:
        self.output_type = output_type
        self.is_text = output_type is str
        self.schema: dict[str, Any] | None = None
        self.wrapped = False
        self.name = "output"
        if self.is_text:
            return
        try:
            self._adapter: TypeAdapter[Any] = TypeAdapter(output_type)
            schema = self._adapter.json_schema()
        except Exception as exc:
            raise ConfigError(
                f"output_type {output_type!r} cannot be turned into a JSON schema: {exc}; "
                "use a pydantic model"
            ) from exc
        self.name = _NAME_OK.sub("_", getattr(output_type, "__name__", "output"))[:64]
        if schema.get("type") != "object":
            self.wrapped = True
            defs = schema.pop("$defs", None)
            schema = {
                "type": "object",
                "properties": {"result": schema},
                "required": ["result"],
                "additionalProperties": False,
            }
            if defs:
                schema["$defs"] = defs
        self.schema = schema

    def parse(self, text: str) -> T:
        """Validate the model's final answer; raises :class:`OutputParseError`."""
        if self.is_text:
            return text  # type: ignore[return-value]  # T is str here
        data = extract_json(text)
        if self.wrapped and isinstance(data, dict) and set(data) == {"result"}:
            data = data["result"]
        try:
            value: T = self._adapter.validate_python(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
                for err in exc.errors()[:10]
            )
            raise OutputParseError(f"the JSON does not match the schema: {problems}") from None
        return value

    def instructions(self) -> str:
        """A line for the system prompt: providers that ignore schemas still see it, and
        JSON mode (DeepSeek) gets the word "json" and the shape it requires."""
        if self.schema is None:
            return ""
        return schema_instructions(self.schema)

    def reask(self, error: OutputParseError) -> Message:
        """The message asking the model to try again, quoting what was wrong."""
        return Message.user(
            f"Your previous answer was rejected: {error}. Reply again with only a JSON "
            "object that matches the required schema exactly."
        )
