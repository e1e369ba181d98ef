"""Records to checksummed JSON rows and back: the one encoding every backend stores.

A row keeps the exact JSON text of a record beside its sha256, so verification
compares stored bytes and never depends on re-serialising (a database that
normalises JSON, such as PostgreSQL's JSONB, would break that; see docs/stores.md).
JSON is written with ``ensure_ascii`` so any Python string, lone surrogates and
NUL included, round-trips through every backend. The few fields a backend must
index or add up (status, tokens, cost, times) are copied into plain columns; on
read they must agree with the checksummed record.

A run is stored as two records: its *head* (id, flow, hash, input, creation:
written once) and its *state* (status, error: replaced whole by ``update_run``),
so no write needs to read-modify-write a checksummed record. The run's totals
and ``updated_at`` are aggregates the store maintains beside them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from shoal.errors import ConfigError
from shoal.secrets import redact, redact_values
from shoal.stores.records import (
    CorruptRecord,
    EffectRecord,
    RunRecord,
    StepRecord,
)

__all__ = [
    "FORMAT",
    "EffectRow",
    "RunRow",
    "StepRow",
    "checksum",
    "decode_effect",
    "decode_run",
    "decode_step",
    "dumps",
    "encode_effect",
    "encode_run",
    "encode_state",
    "encode_step",
]

FORMAT = 1  # version of the record format inside the JSON ("v")


@dataclass(frozen=True, slots=True)
class RunRow:
    run_id: str
    flow: str
    status: str
    created_at: float
    updated_at: float
    tokens: int
    cost_usd: float
    head: str
    head_sum: str
    state: str
    state_sum: str


@dataclass(frozen=True, slots=True)
class StepRow:
    step_id: str
    status: str
    tokens: int
    cost_usd: float
    payload: str
    checksum: str


@dataclass(frozen=True, slots=True)
class EffectRow:
    key: str
    run_id: str
    created_at: float
    payload: str
    checksum: str


def dumps(value: Any, what: str) -> str:
    """Compact JSON text of ``value`` with every registered secret masked (see
    :mod:`shoal.secrets`); ConfigError naming ``what`` when it is not JSON."""
    try:
        return redact_values(
            json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{what} is not JSON-serializable ({exc}); store plain dicts, lists, strings, "
            "numbers, booleans and None (for a pydantic model use model_dump(mode='json'))"
        ) from exc


def checksum(payload: str) -> str:
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def encode_run(run: RunRecord, *, created_at: float, updated_at: float) -> RunRow:
    _check_id(run.run_id, "run_id")
    head = dumps(
        {
            "v": FORMAT, "run_id": run.run_id, "flow": run.flow, "flow_hash": run.flow_hash,
            "input": run.input, "created_at": created_at, "meta": dict(run.meta),
        },
        f"the input or meta of run {run.run_id!r}",
    )
    state, state_sum = encode_state(run.run_id, run.status, run.error, updated_at)
    return RunRow(
        run.run_id, run.flow, run.status, created_at, updated_at, int(run.tokens),
        float(run.cost_usd), head, checksum(head), state, state_sum,
    )


def encode_state(run_id: str, status: str, error: str | None, at: float) -> tuple[str, str]:
    state = dumps(
        {"v": FORMAT, "run_id": run_id, "status": status, "error": _clean(error), "at": at},
        f"the error text of run {run_id!r}",
    )
    return state, checksum(state)


def encode_step(run_id: str, step: StepRecord) -> StepRow:
    _check_id(step.step_id, "step_id")
    payload = dumps(
        {
            "v": FORMAT, "run_id": run_id, "step_id": step.step_id, "status": step.status,
            "result": step.result, "attempt": step.attempt, "started_at": step.started_at,
            "finished_at": step.finished_at, "tokens": int(step.tokens),
            "cost_usd": float(step.cost_usd), "error": _clean(step.error),
            "meta": dict(step.meta),
        },
        f"the result or meta of step {step.step_id!r} of run {run_id!r}",
    )
    return StepRow(
        step.step_id, step.status, int(step.tokens), float(step.cost_usd), payload,
        checksum(payload),
    )


def encode_effect(effect: EffectRecord, *, created_at: float) -> EffectRow:
    _check_id(effect.key, "effect key")
    payload = dumps(
        {
            "v": FORMAT, "key": effect.key, "run_id": effect.run_id, "step_id": effect.step_id,
            "result": effect.result, "created_at": created_at,
        },
        f"the result of effect {effect.key!r}",
    )
    return EffectRow(effect.key, effect.run_id, created_at, payload, checksum(payload))


def decode_run(row: RunRow, where: str) -> RunRecord:
    head = _verified(row.head, row.head_sum, where, run_id=row.run_id, part="head")
    state = _verified(row.state, row.state_sum, where, run_id=row.run_id, part="state")
    try:
        same = (
            head["run_id"] == row.run_id and state["run_id"] == row.run_id
            and head["flow"] == row.flow and state["status"] == row.status
        )
        if not same:
            raise _corrupt(where, "its indexed columns disagree with the checksummed record",
                           run_id=row.run_id)
        return RunRecord(
            run_id=row.run_id, flow=head["flow"], flow_hash=head["flow_hash"],
            input=head["input"], status=state["status"], created_at=head["created_at"],
            updated_at=row.updated_at, tokens=row.tokens, cost_usd=row.cost_usd,
            error=state["error"], meta=head["meta"],
        )
    except (KeyError, TypeError) as exc:
        raise _corrupt(where, f"its record is malformed ({exc!r})", run_id=row.run_id) from exc


def decode_step(run_id: str, row: StepRow, where: str) -> StepRecord:
    doc = _verified(row.payload, row.checksum, where, run_id=run_id, step_id=row.step_id)
    try:
        same = (
            doc["run_id"] == run_id and doc["step_id"] == row.step_id
            and doc["status"] == row.status and doc["tokens"] == row.tokens
            and doc["cost_usd"] == row.cost_usd
        )
        if not same:
            raise _corrupt(where, "its indexed columns disagree with the checksummed record",
                           run_id=run_id, step_id=row.step_id)
        return StepRecord(
            step_id=row.step_id, status=doc["status"], result=doc["result"],
            attempt=doc["attempt"], started_at=doc["started_at"],
            finished_at=doc["finished_at"], tokens=doc["tokens"], cost_usd=doc["cost_usd"],
            error=doc["error"], meta=doc["meta"],
        )
    except (KeyError, TypeError) as exc:
        raise _corrupt(where, f"its record is malformed ({exc!r})", run_id=run_id,
                       step_id=row.step_id) from exc


def decode_effect(key: str, row: EffectRow, where: str) -> EffectRecord:
    doc = _verified(row.payload, row.checksum, where, run_id=row.run_id, key=key)
    try:
        if doc["key"] != key or doc["run_id"] != row.run_id:
            raise _corrupt(where, "its indexed columns disagree with the checksummed record",
                           run_id=row.run_id, key=key)
        return EffectRecord(
            key=key, run_id=doc["run_id"], result=doc["result"], step_id=doc["step_id"],
            created_at=doc["created_at"],
        )
    except (KeyError, TypeError) as exc:
        raise _corrupt(where, f"its record is malformed ({exc!r})", run_id=row.run_id,
                       key=key) from exc


def _verified(
    payload: str, stored_sum: str, where: str, *, run_id: str | None,
    step_id: str | None = None, key: str | None = None, part: str = "",
) -> dict[str, Any]:
    actual = checksum(payload)
    if actual != stored_sum:
        raise _corrupt(
            where, f"its checksum does not match (stored sha256 {stored_sum[:12]}…, "
            f"computed {actual[:12]}…)", run_id=run_id, step_id=step_id, key=key, part=part,
        )
    try:
        doc = json.loads(payload)
    except ValueError as exc:
        raise _corrupt(where, f"it is not valid JSON ({exc})", run_id=run_id,
                       step_id=step_id, key=key, part=part) from exc
    if not isinstance(doc, dict) or doc.get("v") != FORMAT:
        raise _corrupt(where, f"it is not a format-{FORMAT} record", run_id=run_id,
                       step_id=step_id, key=key, part=part)
    return doc


def _corrupt(
    where: str, reason: str, *, run_id: str | None, step_id: str | None = None,
    key: str | None = None, part: str = "",
) -> CorruptRecord:
    if key is not None:
        what = f"effect {key!r} of run {run_id!r}"
    elif step_id is not None:
        what = f"step {step_id!r} of run {run_id!r}"
    else:
        what = f"run {run_id!r}" + (f" ({part} record)" if part else "")
    return CorruptRecord(
        f"{what} in {where} is corrupt: {reason}. It was not used. Inspect the record, "
        f"then delete the run (`shoal delete {run_id}`, or Store.delete_run) or restore it "
        "from a backup.",
        run_id=run_id, step_id=step_id, key=key,
    )


def _clean(error: str | None) -> str | None:
    # Error texts also get the shape rules (keys shoal never registered); results and
    # inputs are user data, masked by registered value only (in ``dumps``).
    return None if error is None else redact(error)


def _check_id(value: str, name: str) -> None:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigError(f"{name} must be a non-empty string without NUL, got {value!r}")
