"""`shoal keys`: create prints the secret once (alone on stdout), the store keeps its hash;
list, show, rotate and revoke work on the store directly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from shoal.cli.keys_cmd import register
from shoal.gateway.key_store import hash_secret, open_key_store


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # two commands: typer keeps the subcommand name
    return app


def _keys(*args: str) -> tuple[int, str, str]:
    out = CliRunner().invoke(_app(), ["keys", *args])
    return out.exit_code, out.stdout, out.stderr


def _hash_of(url: str, name: str) -> str | None:
    async def read() -> str | None:
        async with open_key_store(url) as store:
            record = await store.find(name)
            assert record is not None
            rows = await store._db.fetch(
                "SELECT secret_hash FROM gateway_keys WHERE id = ?", (record.id,))
            return str(rows[0][0])

    return asyncio.run(read())


def test_create_show_rotate_revoke(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    code, out, err = _keys("create", "--name", "team-a", "--budget-usd", "50", "--period",
                           "month", "--rpm", "100", "--tpm", "200000", "--concurrency", "10",
                           "--models", "gpt-4o, deepseek-*", "--store", url)
    assert code == 0, err
    secret = out.strip()
    assert secret.startswith("sk-shoal-") and "\n" not in secret
    assert "shown only this once" in err
    assert _hash_of(url, "team-a") == hash_secret(secret)

    code, out, _ = _keys("show", "team-a", "--store", url, "--json")
    shown = json.loads(out)
    assert code == 0 and secret not in out
    assert (shown["models"], shown["budget_usd"], shown["period"], shown["rpm"], shown["tpm"],
            shown["concurrency"], shown["status"]) == (
        ["gpt-4o", "deepseek-*"], 50.0, "month", 100, 200000, 10, "active")
    assert shown["spend"]["this_month"]["usd"] == 0.0

    code, out, _ = _keys("rotate", "team-a", "--store", url)
    new = out.strip()
    assert code == 0 and new != secret and _hash_of(url, "team-a") == hash_secret(new)

    code, out, _ = _keys("list", "--store", url)
    assert code == 0 and "team-a" in out and new[:15] in out and new not in out

    code, out, _ = _keys("revoke", shown["id"], "--store", url)
    assert code == 0 and "revoked team-a" in out
    code, out, _ = _keys("list", "--store", url, "--json")
    assert json.loads(out) == []
    code, out, _ = _keys("list", "--all", "--store", url, "--json")
    assert [r["status"] for r in json.loads(out)] == ["revoked"]


def test_unknown_key_and_bad_period_exit_2(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    code, _, err = _keys("show", "nobody", "--store", url)
    assert code == 2 and "no store at" in err  # a read makes no store (and says so)
    assert not (tmp_path / "runs.db").exists()
    assert _keys("create", "--name", "somebody", "--store", url)[0] == 0
    code, _, err = _keys("show", "nobody", "--store", url)
    assert code == 2 and "no virtual key named" in err
    code, _, err = _keys("create", "--name", "x", "--period", "week", "--store", url)
    assert code == 2 and "total, day or month" in err
    code, _, err = _keys("list", "--store", "redis://127.0.0.1:6379/0")
    assert code == 2 and "postgresql://" in err


def test_update_changes_limits_in_place(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    code, out, _ = _keys("create", "--name", "team-a", "--budget-usd", "5", "--rpm", "10",
                         "--store", url)
    secret = out.strip()
    code, out, err = _keys("update", "team-a", "--budget-usd", "50", "--period", "month",
                           "--rpm", "none", "--models", "gpt-*", "--store", url, "--json")
    assert code == 0, err
    row = json.loads(out)
    assert (row["budget_usd"], row["period"], row["rpm"], row["models"]) == (
        50.0, "month", None, ["gpt-*"])
    assert _hash_of(url, "team-a") == hash_secret(secret)  # same secret
    code, _, err = _keys("update", "team-a", "--rpm", "many", "--store", url)
    assert code == 2 and "none to lift" in err
    code, _, err = _keys("update", "team-a", "--store", url)
    assert code == 2 and "nothing to update" in err
    code, _, err = _keys("update", "team-a", "--tpm", "0", "--store", url)
    assert code == 2 and "tpm must be >= 1" in err


def test_models_that_name_nothing_are_refused(tmp_path: Path) -> None:
    """A key limited to a typo would get 403 on every call: refused when it is made."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    code, out, err = _keys("create", "--name", "t", "--models", "gpt-4o-mni", "--store", url)
    assert code == 2 and not out.strip()  # no secret printed: no key made
    assert "gpt-4o-mni" in err and "Did you mean" in err and "gpt-4o-mini" in err
    code, _, err = _keys("create", "--name", "t", "--models", "gtp-*", "--store", url)
    assert code == 2 and "matches no model" in err
    code, _, err = _keys("create", "--name", "t", "--models", "gpt-4o-mini,claude-*",
                         "--store", url)
    assert code == 0, err
    code, _, err = _keys("update", "t", "--models", "deepsek-chat", "--store", url)
    assert code == 2 and "deepseek-chat" in err
