"""The ``--store`` part of the commands shoal prints (resume hints): the store the run is
in, never its password."""

from __future__ import annotations

from shoal.stores import DEFAULT_URL, shown_url, store_option


def test_the_default_store_needs_no_option() -> None:
    assert store_option(None) == ""
    assert store_option(DEFAULT_URL) == ""


def test_another_store_is_named() -> None:
    assert store_option("sqlite:///tmp/r.db") == " --store sqlite:///tmp/r.db"
    assert store_option("redis://127.0.0.1:6379/0") == " --store redis://127.0.0.1:6379/0"


def test_a_password_is_never_printed() -> None:
    url = "postgresql://shoal:hunter2-secret@db:5432/runs?sslmode=require"
    assert shown_url(url) == "postgresql://shoal:***@db:5432/runs?sslmode=require"
    option = store_option(url)
    assert "hunter2" not in option
    assert option == " --store 'postgresql://shoal:***@db:5432/runs?sslmode=require'"
