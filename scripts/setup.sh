#!/usr/bin/env bash
# Create .venv (once) and install shoal into it with the given extras (default: offline).
# Idempotent: re-running only installs what changed. Needs Python >= 3.11, pip and gcc
# (llama-cpp-python, behind the offline model, compiles once: ~5 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-offline}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
stamp=".venv/.shoal-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "shoal: installing .[$extras] into .venv (the first time compiles llama.cpp: ~5 min)..." >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
  touch "$stamp"
fi
