"""What ``shoal run`` and ``shoal resume`` load: the target (``module:object``,
``path/to/file.py:object`` or a ``.toml``/``.yaml`` flow spec) and the inputs (arguments,
``--input-file``, ``--input-dir``). Every way these go wrong is a ConfigError saying
what and how to fix it (exit 2), not a traceback: a target file that raises while it is
imported, a file that is not UTF-8 text, a ``.jsonl`` line that is not JSON."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Any

from shoal.errors import ConfigError

__all__ = ["load_inputs", "load_target"]


def _import_object(spec: str) -> Any:
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(f"target {spec!r} must be 'module:object', 'file.py:object' or a "
                          ".toml/.yaml flow spec")
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ConfigError(f"no such file {path}")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        if mod_spec is None or mod_spec.loader is None:
            raise ConfigError(f"cannot import {path}")
        module = importlib.util.module_from_spec(mod_spec)
        folder = str(path.resolve().parent)
        if folder not in sys.path:  # its sibling modules import, as when run as a script
            sys.path.insert(0, folder)
        sys.modules[path.stem] = module
        try:
            mod_spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:  # the file's own code: not shoal's error
            sys.modules.pop(path.stem, None)
            raise _import_failed(str(path), exc) from exc
    else:
        if "" not in sys.path:
            sys.path.insert(0, "")  # the current directory, like `python -m`
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
        except (Exception, SystemExit) as exc:
            raise _import_failed(module_name, exc) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no {attr!r}") from None


def _import_failed(what: str, exc: BaseException) -> ConfigError:
    """The error for a target whose module raised while it was imported (a SyntaxError,
    an ImportError of its own, a script's top-level code run on import)."""
    hint = ""
    if isinstance(exc, SystemExit):
        hint = (" (it exited while imported: a script's command-line handling at top level "
                "runs on import; put it under `if __name__ == \"__main__\":`)")
    elif "running event loop" in str(exc):
        # asyncio.run(main()) refused: main() is dropped unawaited, which is no news
        warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
        hint = (" (its top-level code runs on import, inside shoal's event loop: put "
                "`asyncio.run(main())` under `if __name__ == \"__main__\":`)")
    return ConfigError(f"importing {what} failed: {type(exc).__name__}: {exc}{hint}")


def _read_text(path: Path, what: str) -> str:
    """``path``'s text; a ConfigError when it is not UTF-8 text or cannot be read."""
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}): give a text file saved as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _read_spec(path: Path) -> dict[str, Any]:
    text = _read_text(path, "flow spec")
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        yaml: Any = importlib.import_module("yaml")  # optional: PyYAML
    except ImportError:
        raise ConfigError(
            f"{path} is YAML, which needs PyYAML: pip install pyyaml (or write the spec as TOML)"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with [flow] and [steps.NAME]")
    return data


def load_target(target: str) -> Any:
    """The Agent, Flow or async function TARGET names (factories are called)."""
    from shoal.agents.agent import Agent
    from shoal.flows.flow import Flow

    path = Path(target)
    if path.suffix in (".toml", ".yaml", ".yml") and ":" not in target:
        if not path.is_file():
            raise ConfigError(f"no such flow spec {path}")
        return Flow.from_spec(_read_spec(path), name=None)
    obj = _import_object(target)
    if isinstance(obj, Agent | Flow):
        return obj
    if callable(obj):
        params = [p for p in inspect.signature(obj).parameters.values()
                  if p.default is inspect.Parameter.empty]
        if not params:  # a factory
            made = obj()
            if inspect.isawaitable(made):
                raise ConfigError(f"{target} is an async function of no input; "
                                  "give it one parameter (the input)")
            if isinstance(made, Agent | Flow):
                return made
            raise ConfigError(f"{target}() returned {type(made).__name__}, not an Agent or Flow")
        return obj
    raise ConfigError(f"{target} is a {type(obj).__name__}, not an Agent, Flow or function")


def load_inputs(
    inputs: list[str], input_file: Path | None, input_dir: Path | None, pattern: str
) -> list[tuple[str, Any]]:
    """(label, input) pairs: arguments, then a file (``.jsonl``: one JSON input per line),
    then every file of a folder matching ``pattern`` (sorted)."""
    out: list[tuple[str, Any]] = [(f"arg{i}", text) for i, text in enumerate(inputs)]
    if input_file is not None:
        if not input_file.is_file():
            raise ConfigError(f"no such input file {input_file}")
        text = _read_text(input_file, "input file")
        if input_file.suffix == ".jsonl":
            for n, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    out.append((f"{input_file.name}:{n}", _json_line(input_file, n, line)))
        else:
            out.append((str(input_file), text))
    if input_dir is not None:
        if not input_dir.is_dir():
            raise ConfigError(f"no such input folder {input_dir}")
        files = sorted(p for p in input_dir.glob(pattern) if p.is_file())
        if not files:
            raise ConfigError(f"no files match {pattern!r} in {input_dir}")
        out += [(str(p.relative_to(input_dir)), p.read_text("utf-8", errors="replace"))
                for p in files]
    return out


def _json_line(path: Path, n: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path} line {n} is not JSON: {exc.msg} (column {exc.colno}). A .jsonl file "
            "holds one JSON value per line: a text input is a quoted string "
            "(\"like this\"); for plain text, give the file another suffix") from None
