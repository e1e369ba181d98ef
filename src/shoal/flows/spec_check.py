"""What a flow spec (``[flow]`` and ``[steps.NAME]`` in TOML or YAML) may say, checked
before any step is built: every field known (a typo gets its close matches, as
shoal.toml's own tables do), every ``after`` naming a step of the spec, and no cycle (a
cycle is shown with its path)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from shoal.agents.agent import Agent
from shoal.errors import ConfigError

__all__ = ["FLOW_KEYS", "STEP_KEYS", "as_list", "check_after", "check_fields",
           "step_fields"]


STEP_KEYS = {"after", "on_failure", "default", "retries", "timeout_s", "map", "concurrency",
              "on_item_failure"}
FLOW_KEYS = ("budget_usd", "budget_tokens", "max_concurrency", "default_model")


def step_fields() -> list[str]:
    """What a ``[steps.NAME]`` table may set: the Agent's settings and the step's."""
    agent = [p for p in inspect.signature(Agent.__init__).parameters if p not in ("self", "name")]
    return [*agent, *sorted(STEP_KEYS)]


def check_fields(where: str, table: Mapping[str, Any], known: Sequence[str]) -> None:
    """A ``ConfigError`` for keys of ``table`` not in ``known`` (a typo), naming the close
    matches as shoal.toml's own tables do."""
    import difflib

    problems = []
    for key in table:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), list(known), n=3, cutoff=0.6)
        problems.append(f"unknown field {key!r}" + (
            f"; did you mean: {', '.join(close)}?" if close
            else f"; known fields: {', '.join(known)}"))
    if problems:
        raise ConfigError(f"{where}: {'; '.join(problems)}")


def check_after(steps: Mapping[str, Mapping[str, Any]]) -> None:
    """Every ``after`` of a spec names one of its steps, and the steps form no cycle: a
    ``ConfigError`` naming the step and the dependency (with close matches), or the
    cycle, otherwise."""
    import difflib

    names = list(steps)
    after = {n: as_list(raw.get("after")) for n, raw in steps.items()}
    for name, deps in after.items():
        if not all(isinstance(d, str) for d in deps):
            raise ConfigError(f"[steps.{name}]: after must be a step name or a list of step "
                              f"names, e.g. after = [\"researcher\"], not "
                              f"{steps[name].get('after')!r}")
    for name, deps in after.items():
        for dep in deps:
            if dep in steps:
                continue
            close = difflib.get_close_matches(str(dep), names, n=3, cutoff=0.6)
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            raise ConfigError(
                f"step {name!r} depends on {dep!r}, which is not a step{hint}. The steps are: "
                f"{', '.join(names)}; fix `after` in [steps.{name}] (a step cannot depend "
                "on unknown steps)")
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    path: list[str] = []

    def walk(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in after[name]:
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state and (cycle := walk(dep)) is not None:
                return cycle
        path.pop()
        state[name] = 2
        return None

    for name in names:
        if name in state or (cycle := walk(name)) is None:
            continue
        if len(cycle) == 2:
            raise ConfigError(f"step {name!r} depends on itself: remove {name!r} from `after` "
                              f"in [steps.{name}]")
        raise ConfigError(
            f"steps {', '.join(dict.fromkeys(cycle))} depend on each other (a cycle of "
            f"`after`: {' -> '.join(cycle)}); a step can only run after steps that do not "
            "wait for it")


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]
