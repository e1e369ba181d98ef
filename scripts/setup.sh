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
find_links=()
if [[ ",$extras," == *",offline,"* ]]; then
  # llama.cpp built for a portable x86-64 baseline (AVX2/FMA/F16C), not -march=native:
  # a native build on a CPU with AMX/AVX-512 crashed (SIGSEGV in decode) on this kind of
  # machine. pip's own wheel cache ignores CMAKE_ARGS, so the wheel is built once into a
  # cache directory named after the flags, and installed from there.
  llama="llama-cpp-python==$(sed -n 's/.*"llama-cpp-python\[server\]==\([0-9.]*\)".*/\1/p' pyproject.toml)"
  flags="${SHOAL_LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
  wheels="${XDG_CACHE_HOME:-$HOME/.cache}/shoal/wheels/$(printf '%s %s' "$llama" "$flags" | sha1sum | cut -c1-12)"
  if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "shoal: compiling $llama for the offline model (once: ~5 min on 2 cores)..." >&2
    mkdir -p "$wheels"
    CMAKE_ARGS="$flags" .venv/bin/python -m pip wheel -q --disable-pip-version-check \
      --no-cache-dir --no-deps "$llama" -w "$wheels"
  fi
  find_links=(--find-links "$wheels")
fi
stamp=".venv/.shoal-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "shoal: installing .[$extras] into .venv..." >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check "${find_links[@]}" -e ".[$extras]"
  touch "$stamp"
fi
