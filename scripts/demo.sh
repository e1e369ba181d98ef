#!/usr/bin/env bash
# The main job: a Researcher -> Analyzer -> Writer pipeline on the topic you give.
# With no API keys set it runs on the offline model (SmolLM2-135M via llama.cpp).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh offline
exec .venv/bin/shoal demo "$@"
