"""Reading a journal's records back: whether a step's record was computed from the
inputs it has now, its result's fields (a record that lacks them is corrupt, named as
such), and the run input compared as the journal stores it."""

from __future__ import annotations

import json
from typing import Any

from shoal.agents.recorder import to_jsonable
from shoal.stores.records import CorruptRecord, StepRecord

__all__ = ["inputs_of", "malformed", "normal", "preview", "result", "same"]


def inputs_of(rec: StepRecord) -> str | None:
    found = rec.meta.get("inputs")
    return found if isinstance(found, str) else None


def same(rec: StepRecord, inputs: str | None) -> bool:
    """Whether a record was computed from ``inputs`` (unknown on either side: yes, as
    journals written before input hashes were recorded)."""
    recorded = inputs_of(rec)
    return inputs is None or recorded is None or recorded == inputs


def normal(value: Any) -> Any:
    return json.loads(json.dumps(to_jsonable(value), sort_keys=True))


def preview(value: Any, limit: int = 60) -> str:
    text = json.dumps(to_jsonable(value), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def malformed(run_id: str, step_id: str, exc: BaseException) -> CorruptRecord:
    return CorruptRecord(
        f"step {step_id!r} of run {run_id!r} is not a journal record shoal can replay "
        f"({exc!r}); it was not used. Delete the run (shoal delete {run_id}) or start a new "
        "run_id.",
        run_id=run_id, step_id=step_id)


def result(rec: StepRecord, run_id: str, keys: tuple[str, ...]) -> dict[str, Any]:
    raw = rec.result
    missing = [k for k in keys if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise malformed(run_id, rec.step_id, KeyError(missing))
    assert isinstance(raw, dict)
    return raw
