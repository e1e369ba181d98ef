"""Every ```python and ```toml block of README.md and docs/*.md runs as written.

- A **Python** block is a complete program: it is written to a file in a fresh temporary
  directory and run with this interpreter, with a timeout, with no provider API key in its
  environment and ``SHOAL_CONFIG`` pointing at ``docs/sim.toml``: every catalog provider
  served by one simulator (``shoal sim``, started here in its own process on a free port
  instead of the file's 8100), each in its own strict provider style. So ``Router()``,
  ``agent.run(...)`` and ``flow.run(...)`` in the docs answer from the simulator, exactly
  as they do for a reader who follows the README ("Without keys").
- A **TOML** block is loaded with the loader its kind goes to: a flow spec (``[flow]`` /
  ``[steps.*]``) with ``Flow.from_spec`` and every model it names looked up in the
  configuration; a simulator scenario (first line ``# scenario.toml``) with
  ``SimConfig.from_dict``; a catalog excerpt (first line
  ``# src/shoal/catalog/models.toml``) must equal the shipped catalog's entries; anything
  else is a ``shoal.toml`` laid over the catalog with ``Config.from_dict``, so a model
  naming an undefined channel fails.
- A block naming ``redis://127.0.0.1:6379`` or ``postgresql://postgres@127.0.0.1:5432``
  skips when that server is down, except under ``CI=true`` (as in tests/conftest.py).
- ``bash``/``console``/``sql`` blocks and unlabelled fences are not run here: they are
  shell sessions, schemas and grammars. tests/docs/test_docs_shell.py parses every
  ``shoal`` command of the shell blocks against the command line, and runs the blocks
  marked ``<!-- docs-test: run -->``.

A block opts out only with an explicit marker on the line before its fence,
``<!-- docs-test: skip (reason) -->``; the reason is printed with the counts.
Run: ``.venv/bin/pytest -q tests/docs``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
SIM_TOML = ROOT / "docs" / "sim.toml"
RUN_LANGS = {"python", "toml"}
BLOCK_TIMEOUT_S = 90.0
POOL_SIZE = 3
SKIP_RE = re.compile(r"^<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->$")
FENCE_RE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip_reason: str | None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def extract(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file (any language), with their skip markers."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if m is None:
            i += 1
            continue
        start = i
        end = start + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end >= len(lines):
            raise AssertionError(f"{path.relative_to(ROOT)}:{start + 1}: unclosed code fence")
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        marker = SKIP_RE.match(lines[prev].strip()) if prev >= 0 else None
        code = "\n".join(lines[start + 1:end]) + "\n"
        reason = marker["reason"].strip() if marker else None
        blocks.append(Block(path, start + 1, m["lang"].lower(), code, reason))
        i = end + 1
    return blocks


ALL_BLOCKS = [b for f in DOC_FILES for b in extract(f)]
BLOCKS = [b for b in ALL_BLOCKS if b.lang in RUN_LANGS]
PY_BLOCKS = [b for b in BLOCKS if b.lang == "python"]
TOML_BLOCKS = [b for b in BLOCKS if b.lang == "toml"]


SERVICES = {  # a block naming one of these URLs needs that server (tests/conftest.py rules)
    "redis://127.0.0.1:6379": ("Redis", 6379),
    "postgresql://postgres@127.0.0.1:5432": ("PostgreSQL", 5432),
}
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _missing_service(block: Block) -> str | None:
    for url, (name, port) in SERVICES.items():
        if url in block.code:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                return f"{block.id} needs {name} on 127.0.0.1:{port}"
    return None


def _clean_env(shoal_config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not (k.endswith(("_API_KEY", "_AUTH_TOKEN")) or k.startswith("SHOAL_"))}
    env["SHOAL_CONFIG"] = str(shoal_config)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"
    env["NO_COLOR"] = "1"
    return env


def _run_python(block: Block, workdir: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run the block as ``python example.py``; on timeout, SIGABRT makes the faulthandler
    print every thread's stack (PYTHONFAULTHANDLER) before the output is reported."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "example.py"
    script.write_text(block.code, encoding="utf-8")
    with subprocess.Popen(
        [sys.executable, str(script)], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            err = f"timed out after {BLOCK_TIMEOUT_S:g}s\n{err}"
        code = -1 if err.startswith("timed out") else proc.returncode
    return code, f"{out[-3000:]}\n--- stderr ---\n{err[-8000:]}"


@pytest.fixture(scope="module")
def sim_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """docs/sim.toml, pointed at a simulator running in its own process."""
    from shoal.sim import SimProcess

    with SimProcess() as sim:
        port = sim.url.rsplit(":", 1)[-1]
        text = SIM_TOML.read_text(encoding="utf-8").replace("127.0.0.1:8100", f"127.0.0.1:{port}")
        path = tmp_path_factory.mktemp("docs-sim") / "sim.toml"
        path.write_text(text, encoding="utf-8")
        yield path


@pytest.fixture(scope="module")
def py_results(
    request: pytest.FixtureRequest, sim_config: Path, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Future[tuple[int, str]]]]:
    """Every selected Python block started at once on a small pool; tests wait on theirs."""
    wanted = {item.callspec.params["block"].id for item in request.session.items
              if hasattr(item, "callspec") and isinstance(item.callspec.params.get("block"), Block)}
    env = _clean_env(sim_config)
    base = tmp_path_factory.mktemp("docs-blocks")
    with ThreadPoolExecutor(POOL_SIZE) as pool:
        futures = {
            b.id: pool.submit(_run_python, b, base / f"b{n}", env)
            for n, b in enumerate(PY_BLOCKS)
            if b.id in wanted and b.skip_reason is None and _missing_service(b) is None
        }
        yield futures
        for f in futures.values():
            f.cancel()


@pytest.mark.parametrize("block", PY_BLOCKS, ids=[b.id for b in PY_BLOCKS])
def test_python_block_runs(block: Block, py_results: dict[str, Future[tuple[int, str]]]) -> None:
    if block.skip_reason is not None:
        pytest.skip(f"docs-test: skip ({block.skip_reason})")
    missing = _missing_service(block)
    if missing is not None:  # skipped on a laptop without it; under CI=true it must run
        (pytest.fail if IN_CI else pytest.skip)(missing)
    code, output = py_results[block.id].result()
    assert code == 0, f"{block.id}: the block exited {code}:\n{output}"


def _check_toml(block: Block) -> None:
    from shoal.config import Config

    data = tomllib.loads(block.code)
    if "flow" in data or "steps" in data:
        from shoal.flows.flow import Flow

        config = Config.from_dict({})
        Flow.from_spec(data)
        for step in (data.get("steps") or {}).values():
            if "model" in step:
                config.model(step["model"])  # ConfigError naming close matches
    elif block.code.lstrip().startswith("# src/shoal/catalog/models.toml"):
        catalog = tomllib.loads((ROOT / "src/shoal/catalog/models.toml").read_text("utf-8"))
        for table, entries in data.items():
            for name, fields in entries.items():
                shipped = catalog.get(table, {}).get(name)
                assert shipped is not None, f"[{table}.{name!r}] is not in the catalog"
                for key, value in fields.items():
                    assert shipped.get(key) == value, (
                        f"[{table}.{name!r}] {key} = {value!r}, "
                        f"the catalog has {shipped.get(key)!r}")
    elif block.code.lstrip().startswith("# scenario.toml"):
        from shoal.sim import SimConfig

        SimConfig.from_dict(data)
    else:
        Config.from_dict(data)


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=[b.id for b in TOML_BLOCKS])
def test_toml_block_loads(block: Block) -> None:
    if block.skip_reason is not None:
        pytest.skip(f"docs-test: skip ({block.skip_reason})")
    try:
        _check_toml(block)
    except Exception as exc:  # any loader error, reported against the block
        pytest.fail(f"{block.id}: {type(exc).__name__}: {exc}")


def test_block_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints how many blocks were extracted, run and skipped (with the reasons)."""
    skipped = [b for b in BLOCKS if b.skip_reason is not None]
    not_run = sorted({b.lang or "(unlabelled)" for b in ALL_BLOCKS if b.lang not in RUN_LANGS})
    lines = [
        f"docs blocks: {len(ALL_BLOCKS)} fenced in {len(DOC_FILES)} files; "
        f"{len(PY_BLOCKS)} python + {len(TOML_BLOCKS)} toml extracted, "
        f"{len(BLOCKS) - len(skipped)} run, {len(skipped)} skipped; not run: {', '.join(not_run)}",
        *(f"  skipped {b.id}: {b.skip_reason}" for b in skipped),
    ]
    with capsys.disabled():  # shown in CI's output, also under -q
        print("\n" + "\n".join(lines))
    assert PY_BLOCKS and TOML_BLOCKS, "no python/toml blocks found: is the extractor broken?"
    assert len(skipped) <= 5, f"too many skipped blocks ({len(skipped)}); make them run"
