"""``import shoal`` time against ``import httpx``, and proof that importing touches no network.

Each import runs in a fresh interpreter (so nothing is cached in ``sys.modules``, but
bytecode is, as after an install; one untimed warm-up writes it),
alternating shoal and httpx so both see the same machine load; we report medians
and their ratio. In every run the socket layer is patched to raise and record any
connect or DNS lookup: an import that reaches for the network fails this script.

    python bench/import_time.py            # 7 runs each
    python bench/import_time.py --runs 15 --check   # exit 1 if over the 150 ms target
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

TARGET_MS = 150.0
# Heavy or optional modules that must load on first use, not at ``import shoal``.
HEAVY = (
    "aiohttp", "anyio", "anthropic", "asyncpg", "bpe_openai", "httpx", "httpx2", "litellm",
    "llama_cpp", "openai", "pydantic", "redis", "rich", "typer", "yaml",
)

# Runs in the child: guard the socket layer, time one import, report what it loaded.
CHILD = """
import json, socket, sys, time
attempts = []
def _guard(what):
    def refuse(*args, **kwargs):
        attempts.append(what + repr(args[1:2] if what.startswith("socket.") else args[:1]))
        raise OSError("network access during import: " + what)
    return refuse
for name in ("connect", "connect_ex", "sendto", "bind"):
    setattr(socket.socket, name, _guard("socket." + name))
for name in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex"):
    setattr(socket, name, _guard(name))
before = set(sys.modules)
t0 = time.perf_counter()
import_error = None
try:
    __import__(MODULE)
except Exception as exc:
    import_error = f"{type(exc).__name__}: {exc}"
ms = (time.perf_counter() - t0) * 1000
loaded = sorted({m.split(".")[0] for m in set(sys.modules) - before})
print(json.dumps({"ms": ms, "attempts": attempts, "loaded": loaded, "error": import_error}))
"""


def _child_env() -> dict[str, str]:
    # An installed package has bytecode; a dev shell with PYTHONDONTWRITEBYTECODE=1 would
    # recompile shoal's sources in every run and time the compiler instead.
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _one(module: str) -> dict[str, object]:
    code = CHILD.replace("MODULE", repr(module))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
        env=_child_env(),
    )
    if done.returncode != 0:
        raise SystemExit(f"importing {module} crashed:\n{done.stderr}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _top_offenders(module: str, count: int = 6) -> list[tuple[int, str]]:
    """The slowest direct imports of ``module``, from ``-X importtime`` (cumulative µs)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True, text=True, timeout=120, check=False, env=_child_env(),
    )
    rows: list[tuple[int, int, str]] = []  # (depth, cumulative µs, name)
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].rstrip()
        rows.append((len(name) - len(name.lstrip()), int(parts[1]), name.strip()))
    # Post-order: the module's subtree is the block of deeper lines just before its own.
    top = max((i for i, row in enumerate(rows) if row[2] == module), default=None)
    if top is None:
        return []
    depth = rows[top][0]
    children: list[tuple[int, str]] = []
    for row_depth, cumulative, name in reversed(rows[:top]):
        if row_depth <= depth:
            break
        if row_depth == depth + 2:
            children.append((cumulative, name))
    return sorted(children, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--check", action="store_true", help=f"exit 1 above {TARGET_MS:g} ms")
    args = parser.parse_args()

    times: dict[str, list[float]] = {"shoal": [], "httpx": []}
    for module in times:  # warm-up, not timed: writes bytecode as an install would
        _one(module)
    network: list[str] = []
    loaded_by_shoal: set[str] = set()
    for _ in range(args.runs):
        for module, samples in times.items():
            result = _one(module)
            if result["error"]:
                raise SystemExit(f"import {module} failed: {result['error']}")
            samples.append(float(str(result["ms"])))
            attempts = result["attempts"]
            assert isinstance(attempts, list)
            if module == "shoal":
                network.extend(str(a) for a in attempts)
                loaded = result["loaded"]
                assert isinstance(loaded, list)
                loaded_by_shoal.update(str(m) for m in loaded)

    shoal_ms = statistics.median(times["shoal"])
    httpx_ms = statistics.median(times["httpx"])
    print(f"python {sys.version.split()[0]}, {args.runs} fresh interpreters each, medians:")
    for module, median in (("shoal", shoal_ms), ("httpx", httpx_ms)):
        runs = ", ".join(f"{t:.0f}" for t in times[module])
        print(f"  import {module}  {median:7.1f} ms   (runs: {runs})")
    print(f"  shoal / httpx = {shoal_ms / httpx_ms:.2f}")
    heavy = sorted(loaded_by_shoal & set(HEAVY))
    print(f"  heavy modules loaded by import shoal: {', '.join(heavy) or 'none'}")
    offenders = ", ".join(f"{name} {us}" for us, name in _top_offenders("shoal"))
    print(f"  slowest direct imports of shoal (cumulative µs): {offenders or '(none)'}")

    failed = False
    if network:
        print(f"FAIL: import shoal touched the network: {sorted(set(network))}")
        failed = True
    else:
        print("  network at import: none (socket connect/DNS patched to raise)")
    verdict = "ok" if shoal_ms < TARGET_MS else "OVER TARGET"
    print(f"  target import shoal < {TARGET_MS:g} ms: {verdict}")
    if args.check and shoal_ms >= TARGET_MS:
        failed = True
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
