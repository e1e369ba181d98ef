"""Tools: plain Python functions (sync or async) whose typed signatures become JSON schemas.

``@tool`` (or passing the bare function to ``Agent(tools=[...])``) reads the signature
and the docstring: parameter types and defaults give the schema (via pydantic), the
first docstring paragraph the description, a Google-style ``Args:`` section the
parameter descriptions. A parameter annotated :class:`RunContext` receives the run
context and is hidden from the model.

Running a call never crashes the agent on the model's mistakes: arguments that are not
JSON or do not validate go back to the model as an error message, as do tool errors
(after retries for retryable ones) and timeouts — unless the tool says
``on_error="raise"``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from shoal.agents.deadline import with_timeout
from shoal.agents.errors import ToolFailed
from shoal.agents.run_context import RunContext
from shoal.clock import Clock
from shoal.errors import ConfigError, StoreError, redact
from shoal.types import ToolSpec
from shoal.validate import check_timeout

__all__ = ["Tool", "ToolOutcome", "tool", "truncate"]

DEFAULT_TIMEOUT_S = 60.0
_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_ARG_LINE = re.compile(r"^\s{2,}(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SECTION = re.compile(r"^\s*(Returns|Raises|Yields|Examples?|Notes?):\s*$")


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What one tool call produced, as the model will see it."""

    content: str
    is_error: bool = False
    kind: Literal["ok", "invalid_arguments", "unknown_tool", "error", "timeout"] = "ok"
    attempts: int = 1


def truncate(text: str, limit: int | None) -> str:
    """``text`` cut to ``limit`` characters with a note saying how much was dropped."""
    if limit is None or len(text) <= limit:
        return text
    return (
        text[:limit]
        + f"\n…[truncated: {len(text) - limit} more characters of {len(text)} not shown]"
    )


def _parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    i = 0
    while i < len(lines) and not _ARGS_HEADER.match(lines[i]) and not _SECTION.match(lines[i]):
        summary.append(lines[i])
        i += 1
    current: str | None = None
    in_args = False
    for line in lines[i:]:
        if _ARGS_HEADER.match(line):
            in_args, current = True, None
            continue
        if _SECTION.match(line):
            in_args, current = False, None
            continue
        if not in_args:
            continue
        m = _ARG_LINE.match("  " + line if not line.startswith(" ") else line)
        if m and not line.startswith("      "):
            current = m.group(1).lstrip("*")
            params[current] = m.group(2).strip()
        elif current and line.strip():
            params[current] = (params[current] + " " + line.strip()).strip()
    text = "\n".join(summary).strip()
    return text.split("\n\n")[0].replace("\n", " "), params


def _render(result: Any) -> str:
    if isinstance(result, str):
        return result
    if result is None:
        return "null"
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    from pydantic_core import to_jsonable_python

    return json.dumps(to_jsonable_python(result, fallback=str), ensure_ascii=False)


class Tool:
    """A function the model may call. Build with :func:`tool` or :meth:`from_function`.

    Attributes:
        name, description: what the model sees.
        parameters: the JSON schema of the arguments.
        timeout_s: per attempt, on the runner's clock (None = no limit).
        retries: extra attempts for retryable errors (``retry_on``, errors whose
            ``retryable`` attribute is true, and timeouts).
        max_result_chars: longer results are truncated (None = the runner's default).
        on_error: ``"report"`` sends failures to the model; ``"raise"`` stops the run
            with :class:`~shoal.agents.errors.ToolFailed`.
        threaded: run a sync function in a worker thread (True) or inline (False;
            only for functions that never block).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        retries: int = 1,
        retry_on: tuple[type[BaseException], ...] = (ConnectionError,),
        retry_backoff_s: float = 0.5,
        max_result_chars: int | None = None,
        on_error: Literal["report", "raise"] = "report",
        threaded: bool = True,
    ) -> None:
        if retries < 0:
            raise ConfigError(f"tool retries must be >= 0, got {retries}")
        self.fn = fn
        self.name = name or fn.__name__
        check_timeout(timeout_s, f"tool {self.name!r}:")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.name):
            raise ConfigError(
                f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-' "
                "(what every provider accepts); pass name=..."
            )
        doc_text, doc_params = _parse_docstring(fn.__doc__)
        self.description = description if description is not None else doc_text
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_on = retry_on
        self.retry_backoff_s = retry_backoff_s
        self.max_result_chars = max_result_chars
        self.on_error = on_error
        self.threaded = threaded
        self.is_async = inspect.iscoroutinefunction(fn)
        self.context_param: str | None = None
        self.args_model = self._build_args_model(doc_params)
        schema = self.args_model.model_json_schema()
        schema.pop("title", None)
        self.parameters: dict[str, Any] = schema
        self._spec = ToolSpec(self.name, self.description, self.parameters)

    @classmethod
    def from_function(cls, fn: Callable[..., Any] | Tool) -> Tool:
        """``fn`` as a tool with default settings (a Tool is returned as is)."""
        return fn if isinstance(fn, Tool) else cls(fn)

    def _build_args_model(self, doc_params: dict[str, str]) -> type[BaseModel]:
        try:
            hints = get_type_hints(self.fn, include_extras=True)
        except Exception as exc:
            raise ConfigError(
                f"cannot read the type hints of tool {self.name!r}: {exc}; "
                "annotate every parameter with an importable type"
            ) from exc
        fields: dict[str, Any] = {}
        for pname, param in inspect.signature(self.fn).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ConfigError(f"tool {self.name!r}: *args/**kwargs cannot become a schema")
            ann = hints.get(pname, Any)
            if ann is RunContext or RunContext in get_args(ann):
                self.context_param = pname
                continue
            default = ... if param.default is inspect.Parameter.empty else param.default
            desc = doc_params.get(pname)
            fields[pname] = (ann, Field(default, description=desc) if desc else default)
        model = create_model(
            f"{self.name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        return cast(type[BaseModel], model)

    def spec(self) -> ToolSpec:
        """The provider-neutral description sent to the model."""
        return self._spec

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying function directly (handy in tests)."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    async def _call_once(self, kwargs: dict[str, Any]) -> Any:
        if self.is_async:
            return await cast(Callable[..., Awaitable[Any]], self.fn)(**kwargs)
        if self.threaded:
            return await asyncio.to_thread(self.fn, **kwargs)
        return self.fn(**kwargs)

    async def invoke(
        self,
        arguments: str,
        ctx: RunContext,
        *,
        clock: Clock,
        max_result_chars: int | None = None,
    ) -> ToolOutcome:
        """Validate the model's ``arguments`` (JSON text), run the tool, render its result."""
        try:
            raw = json.loads(arguments or "{}")
            args = self.args_model.model_validate(raw)
        except ValueError as exc:
            detail = _validation_text(exc) if isinstance(exc, ValidationError) else str(exc)
            return ToolOutcome(
                f"Invalid arguments for tool {self.name!r}: {detail}. "
                "Call it again with arguments that match its JSON schema.",
                is_error=True,
                kind="invalid_arguments",
            )
        kwargs = {k: getattr(args, k) for k in type(args).model_fields}
        if self.context_param:
            kwargs[self.context_param] = ctx
        limit = self.max_result_chars if self.max_result_chars is not None else max_result_chars
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await with_timeout(clock, self._call_once(kwargs), self.timeout_s)
            except StoreError:
                # The journal failed (a corrupt record, a store that is down): the run must
                # stop with the record named, never go on as if the model could handle it.
                raise
            except TimeoutError:
                kind: Literal["error", "timeout"] = "timeout"
                message = f"timed out after {self.timeout_s:g}s"
                retryable = True
            except Exception as exc:
                kind = "error"
                message = redact(f"{type(exc).__name__}: {exc}")
                retryable = isinstance(exc, self.retry_on) or bool(
                    getattr(exc, "retryable", False)
                )
            else:
                return ToolOutcome(truncate(_render(result), limit), attempts=attempt)
            if retryable and attempt <= self.retries:
                await clock.sleep(self.retry_backoff_s * (2 ** (attempt - 1)))
                continue
            if self.on_error == "raise":
                raise ToolFailed(self.name, f"{message} (after {attempt} attempt(s))")
            return ToolOutcome(
                truncate(f"Error: tool {self.name!r} failed: {message}", limit),
                is_error=True,
                kind=kind,
                attempts=attempt,
            )


def _validation_text(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(arguments)'}: {err['msg']}"
        for err in exc.errors()
    )


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    retries: int = 1,
    retry_on: tuple[type[BaseException], ...] = (ConnectionError,),
    max_result_chars: int | None = None,
    on_error: Literal["report", "raise"] = "report",
    threaded: bool = True,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    retries: int = 1,
    retry_on: tuple[type[BaseException], ...] = (ConnectionError,),
    max_result_chars: int | None = None,
    on_error: Literal["report", "raise"] = "report",
    threaded: bool = True,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a function a :class:`Tool`: ``@tool`` or ``@tool(timeout_s=5, retries=2)``."""

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool(
            f,
            name=name,
            description=description,
            timeout_s=timeout_s,
            retries=retries,
            retry_on=retry_on,
            max_result_chars=max_result_chars,
            on_error=on_error,
            threaded=threaded,
        )

    return wrap(fn) if fn is not None else wrap
