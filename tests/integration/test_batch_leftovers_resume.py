"""``shoal resume BATCH_ID`` stopped with Ctrl-C (a finding left by the last session): it
printed nothing of its items and wrote no ``--json`` (its Batch was built inside
``shoal.scale.batch_run.resume_batch``, out of the command's reach). Now it prints the
items' summary as ``shoal batch`` does on Ctrl-C: succeeded / failed / interrupted, the
command that continues the batch, the ``--json`` file (``"status": "interrupted"``),
exit 130. An item this resume had not finished again shows ``interrupted``, not the
failure recorded by the run before.

``shoal`` runs as a process stopped with SIGINT (its handler restored, as a terminal has
it), journaled in SQLite under tmp_path; the signal goes once the store shows the quick
items' new outcomes.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

from sim_cli_kit import clean_env, ctrl_c, item_outcomes, shoal_argv

# "first" in LEFTOVER_MARK: the first run, where only "a" gets through. Then: "slow..."
# inputs wait for ever, "bad" is refused, the rest come back upper-cased.
WORK = textwrap.dedent("""
    import asyncio
    import os
    from pathlib import Path


    async def work(text):
        if Path(os.environ["LEFTOVER_MARK"], "first").exists():
            if text != "a":
                raise ValueError("not yet")
            return "A"
        if text.startswith("slow"):
            await asyncio.Event().wait()
        if text == "bad":
            raise ValueError("this input is refused")
        return text.upper()
""")
INPUTS = ["a", "b", "bad", "slow1", "slow2"]
LABELS = [f"arg{i}" for i in range(len(INPUTS))]  # how `shoal batch` names argument inputs
STATUSES = ["succeeded", "succeeded", "failed", "interrupted", "interrupted"]


def test_ctrl_c_on_a_batch_resume_prints_its_items_and_writes_the_json(
        tmp_path: Path) -> None:
    (tmp_path / "work.py").write_text(WORK)
    (tmp_path / "first").touch()
    db = tmp_path / "runs.db"
    store = f"sqlite:///{db}"
    env = clean_env(LEFTOVER_MARK=str(tmp_path))
    first = subprocess.run(
        shoal_argv("batch", "work.py:work", *INPUTS, "--store", store, "--run-id", "br",
                   "--no-progress"),
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 1, (first.stdout, first.stderr)  # 4 of 5 items failed
    assert [s for s, _ in sorted(item_outcomes(db, "br").items())] == list(range(5))
    (tmp_path / "first").unlink()

    def quick_ones_done() -> bool:  # b succeeded, bad refused again, by this resume
        found = item_outcomes(db, "br")
        return found[1][0] == "succeeded" and "this input is refused" in found[2][1]

    code, out, err = ctrl_c(["resume", "br", "--store", store, "--json", "out.json",
                             "--no-progress"], tmp_path, quick_ones_done, env=env)
    text = " ".join(out.split())
    assert code == 130, (out, err)
    assert "Traceback" not in err, err
    assert "batch br · interrupted: 2 succeeded, 1 failed, 2 interrupted" in text, out
    for item, status in zip(LABELS, STATUSES, strict=True):
        assert f" {item} {status} " in text, (item, out)
    assert (f"interrupted: batch br journaled in {store}; continue with: shoal resume br "
            f"--store {store} (runs its 3 unfinished items again)") in text, out

    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["status"] == "interrupted" and doc["batch_id"] == "br"
    assert (doc["succeeded"], doc["failed"], doc["interrupted"]) == (2, 1, 2)
    assert [(i["input"], i["status"]) for i in doc["items"]] == list(zip(
        LABELS, STATUSES, strict=True))
    assert [i["output"] for i in doc["items"][:2]] == ["A", "B"]
    assert "ValueError: this input is refused" in doc["items"][2]["error"]
    assert [i["error"] for i in doc["items"][3:]] == [None, None]  # not the old "not yet"
    assert [i["run_id"] for i in doc["items"]] == [f"br-{i}" for i in range(5)]
