"""What a store holds: run, step and effect records, and the store errors.

Store errors (to be moved into ``shoal.errors``)::

    RunError
    └── StoreError               a store operation failed (not retryable as is)
        ├── StoreUnavailable     the store could not be reached after retries
        ├── CorruptRecord        a stored record failed its checksum
        ├── RunNotFound          no run with that id
        └── RunExists            a different run already has that id
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from shoal.errors import RunError

__all__ = [
    "FINISHED",
    "RUN_STATUSES",
    "STEP_STATUSES",
    "CorruptRecord",
    "EffectRecord",
    "RunExists",
    "RunNotFound",
    "RunRecord",
    "RunStatus",
    "StepRecord",
    "StepStatus",
    "StoreError",
    "StoreUnavailable",
]

RunStatus = Literal["running", "succeeded", "failed", "cancelled"]
StepStatus = Literal["pending", "running", "succeeded", "failed", "cancelled", "skipped"]
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
STEP_STATUSES: tuple[str, ...] = get_args(StepStatus)
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class StoreError(RunError):
    """A store operation failed. The message names the operation, the record and the store."""


class StoreUnavailable(StoreError):
    """The store could not be reached or written after bounded retries; nothing was saved."""

    retryable = True


class CorruptRecord(StoreError):
    """A stored record failed its checksum (or its identity check); it was not used."""

    def __init__(
        self, message: str, *, run_id: str | None = None, step_id: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.step_id = step_id
        self.key = key


class RunNotFound(StoreError):
    """No run with that id exists in the store (never created, deleted, pruned or expired)."""


class RunExists(StoreError):
    """``create_run`` with an id that a *different* run already holds."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run of a flow.

    ``tokens``/``cost_usd`` are the run's totals: the store keeps them equal to the
    sum over its steps (plus whatever the run was created with). ``created_at`` and
    ``updated_at`` are epoch seconds from the store's clock; ``updated_at`` moves on
    every write to the run or its steps (prune uses it).
    """

    run_id: str
    flow: str
    flow_hash: str = ""
    input: Any = None
    status: RunStatus = "running"
    created_at: float = 0.0
    updated_at: float = 0.0
    tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One step of a run. ``result`` and ``meta`` must be JSON-serializable.

    ``tokens``/``cost_usd`` are the step's spend so far, all attempts included: the
    run's totals move by the difference when a step is rewritten, so writing the
    same step twice never counts twice.
    """

    step_id: str
    status: StepStatus
    result: Any = None
    attempt: int = 1
    started_at: float | None = None
    finished_at: float | None = None
    tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EffectRecord:
    """The recorded result of a side effect, under a store-wide idempotency key."""

    key: str
    run_id: str
    result: Any = None
    step_id: str | None = None
    created_at: float = 0.0


