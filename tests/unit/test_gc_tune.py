"""The collector tuning of long-running processes (shoal.gc_tune), in fresh interpreters:
freezing is process-wide, so it is never done to the test process itself."""

from __future__ import annotations

import subprocess
import sys


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_tune_gc_freezes_the_start_up_heap_once_and_raises_the_young_threshold() -> None:
    out = run_python(
        "import gc, shoal.traffic.router\n"
        "from shoal.gc_tune import GC_THRESHOLD, tune_gc\n"
        "assert gc.get_freeze_count() == 0\n"
        "first = tune_gc(); frozen = gc.get_freeze_count()\n"
        "second = tune_gc()\n"
        "print(first, frozen > 10_000, second, gc.get_freeze_count() == frozen,"
        " gc.get_threshold() == GC_THRESHOLD)\n")
    assert out == "True True False True True"


def test_a_program_that_froze_its_own_heap_is_left_alone() -> None:
    out = run_python(
        "import gc\n"
        "from shoal.gc_tune import tune_gc\n"
        "gc.freeze(); before = gc.get_freeze_count(); t = gc.get_threshold()\n"
        "print(tune_gc(), gc.get_freeze_count() == before, gc.get_threshold() == t)\n")
    assert out == "False True True"


def test_the_cli_loop_runs_its_coroutine_with_the_collector_tuned() -> None:
    out = run_python(
        "import gc\n"
        "from shoal.cli.loop import run\n"
        "async def main():\n"
        "    return gc.get_freeze_count() > 10_000, gc.get_threshold()[0]\n"
        "print(*run(main()))\n")
    assert out == "True 7000"


def test_a_server_freezes_what_it_built_after_the_loops_start_up_freeze() -> None:
    out = run_python(
        "import gc\n"
        "from shoal.gc_tune import freeze_built, tune_gc\n"
        "tune_gc(); before = gc.get_freeze_count()\n"
        "built = [[i] for i in range(5000)]\n"
        "freeze_built()\n"
        "print(gc.get_freeze_count() >= before + 5000, gc.get_threshold()[0])\n")
    assert out == "True 7000"
