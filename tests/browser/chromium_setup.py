"""Chromium for the browser tests: Debian's package, installed by
scripts/install_chromium.sh when it is missing. (A fixture module, not a conftest: a
second conftest.py clashes with tests/conftest.py as a module name under mypy.)
Under CI=true a Chromium that cannot be installed fails the tests; elsewhere they skip,
saying how to install it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The journaled runs the report tests share live beside the integration tests.
sys.path.insert(0, str(ROOT / "tests" / "integration"))


def _usable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


@pytest.fixture(scope="session", name="chromium")
def chromium_path() -> str:
    """The path of a headless-capable Chromium."""
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if _usable(path):
        return path
    script = ROOT / "scripts" / "install_chromium.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          timeout=1200, check=False, env={**os.environ, "CHROMIUM": path})
    if _usable(path):
        return path
    why = (f"Chromium is not at {path} and {script.relative_to(ROOT)} could not install it:"
           f" {done.stderr.strip() or done.stdout.strip() or f'exit status {done.returncode}'}."
           " Install it (sudo apt-get install -y chromium) or set CHROMIUM=/path/to/chromium.")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(why)
    pytest.skip(why)
