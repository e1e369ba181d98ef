"""The curated public API, and what `import shoal` may load."""

from __future__ import annotations

import subprocess
import sys

import pytest

import shoal


def test_every_exported_name_resolves() -> None:
    for name in shoal.__all__:
        assert getattr(shoal, name) is not None, name


def test_all_lists_exactly_the_lazy_exports() -> None:
    assert sorted(shoal.__all__) == sorted(["__version__", *shoal._EXPORTS])


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        _ = shoal.NoSuchThing


def test_import_loads_no_heavy_dependency_and_no_network() -> None:
    """`import shoal` must stay fast: nothing heavy, no sockets (timed in bench/import_time.py)."""
    code = (
        "import socket, sys\n"
        "def deny(*a, **k): raise RuntimeError('network touched at import')\n"
        "socket.socket.connect = deny\n"
        "socket.create_connection = deny\n"
        "socket.getaddrinfo = deny\n"
        "import shoal\n"
        "heavy = [m for m in ('aiohttp', 'pydantic', 'redis', 'asyncpg', 'bpe_openai',"
        " 'llama_cpp', 'rich', 'typer', 'asyncio') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
