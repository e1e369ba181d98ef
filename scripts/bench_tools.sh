#!/usr/bin/env bash
# Tools for the benches only: the load generator wrk from Debian and the Python peers and
# stack candidates (bench/gateway_bench.py, bench/gateway_stack_bench.py), and valgrind
# (bench/observe_instructions.py). CI and the tests never need any of this.
#
#     bash scripts/bench_tools.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get install -y wrk || { $SUDO apt-get update && $SUDO apt-get install -y wrk; } \
            || echo "no wrk: the benches fall back to their Python load generator" >&2
    else
        echo "no apt-get: install wrk yourself, or the benches use their Python load generator" >&2
    fi
fi

if ! command -v valgrind >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y valgrind || { $SUDO apt-get update && $SUDO apt-get install -y valgrind; } \
        || echo "no valgrind: bench/observe_instructions.py will not run" >&2
fi

PIP=".venv/bin/pip"
[ -x "$PIP" ] || PIP="python -m pip"
# LiteLLM's proxy (the peer), the stack candidates, fast JSON codecs, psutil for RSS/CPU,
# the HTTP client candidates (bench/http_clients.py, bench/http_client_semantics.py).
$PIP install -q 'litellm[proxy]>=1.50' granian blacksheep 'uvicorn[standard]' httptools \
    orjson msgspec psutil aiosonic pyreqwest curl-cffi
command -v wrk >/dev/null 2>&1 && wrk --version 2>&1 | head -1 || true
