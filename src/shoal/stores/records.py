"""What a store holds: run, step and effect records. The store errors live in
:mod:`shoal.errors` (``StoreError`` and its subclasses) and are re-exported here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from shoal.errors import (
    CorruptRecord,
    LeaseLost,
    RunBusy,
    RunExists,
    RunNotFound,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "FINISHED",
    "RUN_STATUSES",
    "STEP_STATUSES",
    "CorruptRecord",
    "EffectRecord",
    "Lease",
    "LeaseLost",
    "RunBusy",
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


@dataclass(frozen=True, slots=True)
class Lease:
    """Who executes a run, until when: ``owner`` (``<nonce>@<host>:<pid>:<node>``, see
    :mod:`shoal.stores.leases`) holds the run until ``expires_at`` (epoch seconds, by the
    clock of the store that stamped it) unless it renews the lease first."""

    run_id: str
    owner: str
    expires_at: float

    def live(self, now: float) -> bool:
        """Whether the lease still binds at ``now`` (epoch seconds)."""
        return now < self.expires_at
