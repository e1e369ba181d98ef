"""Tools: schemas from typed signatures, and calls that never crash the run on the model's
mistakes (invalid arguments, errors, timeouts), in virtual time."""

from __future__ import annotations

import json
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from shoal.agents import Agent, RunContext, Runner, Tool, ToolFailed, tool
from shoal.agents.testing import ScriptedClient
from shoal.agents.tools import truncate
from shoal.clock import VirtualClock
from shoal.errors import ConfigError


def _ctx(runner: Runner | None = None, deps: Any = None) -> RunContext:
    r = runner or Runner(ScriptedClient())
    return RunContext(run_id="r1", step_id="s", agent="a", runner=r, deps=deps)


class Point(BaseModel):
    x: int
    y: int


def test_schema_from_signature_and_docstring() -> None:
    def search(
        query: str,
        limit: int = 5,
        lang: Annotated[str | None, Field(description="ISO code")] = None,
        where: Point | None = None,
        ctx: RunContext | None = None,
    ) -> list[str]:
        """Search the web for pages.

        Longer explanation that is not part of the description.

        Args:
            query: what to look for,
                over two lines.
            limit: how many results.
        """
        return []

    t = Tool(search)
    assert t.name == "search"
    assert t.description == "Search the web for pages."
    props = t.parameters["properties"]
    assert set(props) == {"query", "limit", "lang", "where"}
    assert t.parameters["required"] == ["query"]
    assert props["query"]["description"] == "what to look for, over two lines."
    assert props["limit"]["default"] == 5
    assert props["lang"]["description"] == "ISO code"
    assert "$defs" in t.parameters
    assert "Point" in t.parameters["$defs"]
    assert t.parameters["additionalProperties"] is False
    spec = t.spec()
    assert spec.name == "search"
    assert spec.parameters is t.parameters


def test_context_parameter_is_hidden_and_injected() -> None:
    def whoami(ctx: RunContext) -> str:
        return f"{ctx.agent}:{ctx.deps}"

    t = Tool(whoami)
    assert t.context_param == "ctx"
    assert t.parameters["properties"] == {}


def test_bad_tool_definitions_are_config_errors() -> None:
    def varargs(*items: str) -> None:
        return None

    with pytest.raises(ConfigError, match=r"\*args"):
        Tool(varargs)
    with pytest.raises(ConfigError, match="tool name"):
        Tool(lambda: None, name="has space")
    with pytest.raises(ConfigError, match="several tools"):
        Agent("a", tools=[_noop, _noop])


def _noop() -> None:
    return None


async def test_valid_call_renders_results() -> None:
    @tool
    async def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    out = await add.invoke('{"a": 2, "b": "3"}', _ctx(), clock=VirtualClock())
    assert not out.is_error
    assert json.loads(out.content) == {"sum": 5}

    @tool(threaded=False)
    def point() -> Point:
        return Point(x=1, y=2)

    out = await point.invoke("", _ctx(), clock=VirtualClock())
    assert json.loads(out.content) == {"x": 1, "y": 2}


async def test_sync_tool_runs_in_a_thread_and_gets_context() -> None:
    import threading

    main = threading.get_ident()

    def where(ctx: RunContext) -> str:
        return f"{threading.get_ident() != main}:{ctx.deps}"

    out = await Tool(where).invoke("{}", _ctx(deps="d"), clock=VirtualClock())
    assert out.content == "True:d"


@pytest.mark.parametrize(
    ("arguments", "expect"),
    [
        ("{not json", "Invalid arguments for tool 'add'"),
        ('{"a": 1}', "b: Field required"),
        ('{"a": 1, "b": 2, "c": 3}', "c: Extra inputs are not permitted"),
        ('{"a": "x", "b": 2}', "a: Input should be a valid integer"),
        ("[1, 2]", "valid dictionary"),
    ],
)
async def test_invalid_arguments_go_back_as_error_messages(arguments: str, expect: str) -> None:
    ran = []

    def add(a: int, b: int) -> int:
        ran.append(1)
        return a + b

    out = await Tool(add).invoke(arguments, _ctx(), clock=VirtualClock())
    assert out.is_error
    assert out.kind == "invalid_arguments"
    assert expect in out.content
    assert ran == []


async def test_retryable_errors_are_retried_with_backoff_on_the_clock() -> None:
    clock = VirtualClock()
    attempts: list[float] = []

    async def flaky() -> str:
        attempts.append(clock.now())
        if len(attempts) < 3:
            raise ConnectionError("reset by peer")
        return "ok"

    t = Tool(flaky, retries=2, retry_backoff_s=1.0)
    out = await clock.run(t.invoke("{}", _ctx(), clock=clock))
    assert out.content == "ok"
    assert out.attempts == 3
    assert attempts == [0.0, 1.0, 3.0]  # backoff 1 s then 2 s


async def test_non_retryable_error_is_reported_once() -> None:
    calls = []

    def broken() -> str:
        calls.append(1)
        raise ValueError("bad state sk-abcdefghijklmnop")

    out = await Tool(broken, retries=3).invoke("{}", _ctx(), clock=VirtualClock())
    assert out.is_error
    assert out.kind == "error"
    assert out.attempts == 1
    assert "ValueError: bad state" in out.content
    assert "sk-abcdefghijklmnop" not in out.content  # keys never reach the model
    assert len(calls) == 1


async def test_timeout_in_virtual_time_then_retry_then_report() -> None:
    clock = VirtualClock()
    starts: list[float] = []

    async def hang() -> str:
        starts.append(clock.now())
        await clock.sleep(1000)
        return "never"

    t = Tool(hang, timeout_s=5, retries=1, retry_backoff_s=0.5)
    out = await clock.run(t.invoke("{}", _ctx(), clock=clock))
    assert out.is_error
    assert out.kind == "timeout"
    assert out.attempts == 2
    assert "timed out after 5s" in out.content
    assert starts == [0.0, 5.5]
    assert clock.now() == pytest.approx(10.5)


async def test_on_error_raise_stops_the_run() -> None:
    def broken() -> str:
        raise RuntimeError("nope")

    t = Tool(broken, on_error="raise", retries=0)
    with pytest.raises(ToolFailed, match="tool 'broken' failed: RuntimeError: nope"):
        await t.invoke("{}", _ctx(), clock=VirtualClock())


async def test_long_results_are_truncated() -> None:
    def big() -> str:
        return "x" * 100

    out = await Tool(big, max_result_chars=10).invoke("{}", _ctx(), clock=VirtualClock())
    assert out.content.startswith("x" * 10 + "\n…[truncated: 90 more characters of 100")
    # the runner's default applies when the tool sets none
    out = await Tool(big).invoke("{}", _ctx(), clock=VirtualClock(), max_result_chars=20)
    assert out.content.startswith("x" * 20 + "\n…[truncated: 80")
    assert truncate("short", 10) == "short"
    assert truncate("abc", None) == "abc"


def test_tool_is_still_callable() -> None:
    @tool
    def double(n: int) -> int:
        return 2 * n

    assert double(4) == 8
    assert repr(double) == "Tool('double')"
