#!/usr/bin/env bash
# The whole test suite. Tests needing Redis/PostgreSQL skip (naming what to start) when
# those are down, except under CI=true, where they must run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "dev,offline"
# The run report's browser test needs Chromium; under CI install it here (a no-op when present).
if [ "${CI:-}" = "true" ]; then bash scripts/install_chromium.sh; fi
exec .venv/bin/python -m pytest -q "$@"
