#!/usr/bin/env bash
# The whole test suite. Tests needing Redis/PostgreSQL skip (naming what to start) when
# those are down, except under CI=true, where they must run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "dev,offline"
exec .venv/bin/python -m pytest -q "$@"
