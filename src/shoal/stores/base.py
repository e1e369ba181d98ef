"""The Store seam: durable runs, their steps and their recorded side effects.

A *run* is one execution of a flow; its *steps* are keyed by a string id
("analyzer", "map/17", "writer/turn/3"). Writing a step is atomic: the step's
status, result and usage are committed together, with the run's totals, before
the call returns, so a resumed run can trust every step it reads. *Effects*
record the result of a side-effecting tool under an idempotency key, so a
resumed run does not repeat the side effect.

A run being executed carries a *lease* (:mod:`shoal.stores.leases`), taken, renewed and
released atomically; writes naming another executor than its holder are refused.

Every record is stored as JSON beside its sha256; a record whose bytes no longer
match raises :class:`CorruptRecord` naming its run and step and is never used.
A write that fails is retried (bounded, through the injected clock) and then
raises :class:`StoreUnavailable`: a caller never proceeds believing a step was
saved when it was not.

The public methods live here (validation, encoding, checksums, retries); a
backend implements only the ``_raw_*`` primitives over encoded rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import replace
from types import TracebackType
from typing import Self, TypeVar

from shoal.clock import Clock, RealClock
from shoal.errors import ConfigError, ShoalError
from shoal.stores import codec
from shoal.stores.codec import EffectRow, RunRow, StepRow
from shoal.stores.leases import (
    WRITER,
    LeaseMode,
    check_lease_s,
    executing_message,
    lost_message,
)
from shoal.stores.records import (
    FINISHED,
    RUN_STATUSES,
    STEP_STATUSES,
    CorruptRecord,
    EffectRecord,
    Lease,
    LeaseLost,
    RunBusy,
    RunExists,
    RunNotFound,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
    StoreError,
    StoreUnavailable,
)
from shoal.stores.store_retry import RetryPolicy

__all__ = [
    "FINISHED",
    "CorruptRecord",
    "EffectRecord",
    "Lease",
    "RetryPolicy",
    "RunExists",
    "RunNotFound",
    "RunRecord",
    "RunStatus",
    "StepRecord",
    "StepStatus",
    "Store",
    "StoreError",
    "StoreUnavailable",
]

T = TypeVar("T")


class Store(ABC):
    """Durable runs, steps and effects. Use as ``async with store: ...``.

    Subclasses implement the ``_raw_*`` primitives; every public method validates,
    encodes, retries transient failures and verifies checksums here, once.
    """

    #: scheme shown in messages, e.g. "sqlite"
    kind: str = "store"

    def __init__(self, *, clock: Clock | None = None, retry: RetryPolicy | None = None) -> None:
        self._clock: Clock = clock or RealClock()
        self._retry = retry or RetryPolicy()
        self._opened = False

    # -- lifecycle --------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where this store lives, with any password removed (safe to print)."""
        return self.kind

    async def open(self) -> Self:
        """Connect and apply pending schema migrations; refuse a newer schema."""
        if not self._opened:
            try:
                await self._retrying("open the store", self._raw_open)
            except BaseException:
                await self._raw_close()  # release a half-open pool, client or thread
                raise
            self._opened = True
        return self

    async def aclose(self) -> None:
        if self._opened:
            self._opened = False
            await self._raw_close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- runs -------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> RunRecord:
        """Record a new run and return it as stored (times stamped).

        Idempotent: creating the same run again returns the stored one; a different
        run under the same id raises :class:`RunExists`.
        """
        self._check_open()
        now = self._clock.wall()
        created = run.created_at or now
        row = codec.encode_run(run, created_at=created, updated_at=now)
        existing = await self._retrying(
            f"create run {run.run_id!r}", lambda: self._raw_create_run(row), run_id=run.run_id
        )
        if existing is not None:
            if existing.head_sum != row.head_sum:
                raise RunExists(
                    f"run {run.run_id!r} already exists in {self.url} with a different flow, "
                    "input or creation time; resume it, or pick another run_id"
                )
            return self._decode_run(existing)
        return self._decode_run(row)

    async def get_run(self, run_id: str) -> RunRecord | None:
        self._check_open()
        row = await self._retrying(
            f"read run {run_id!r}", lambda: self._raw_get_run(run_id), run_id=run_id
        )
        return None if row is None else self._decode_run(row)

    async def require_run(self, run_id: str) -> RunRecord:
        """``get_run`` that raises :class:`RunNotFound` instead of returning None."""
        run = await self.get_run(run_id)
        if run is None:
            raise self._not_found(run_id)
        return run

    async def update_run(
        self, run_id: str, *, status: RunStatus, error: str | None = None,
        owner: str | None = None,
    ) -> None:
        """Set a run's status (and error text). Raises :class:`RunNotFound`, and
        :class:`LeaseLost` when fenced (``owner``: as for :meth:`put_step`)."""
        self._check_open()
        if status not in RUN_STATUSES:
            raise ConfigError(f"unknown run status {status!r}; use one of {RUN_STATUSES}")
        owner = owner or WRITER.get()
        now = self._clock.wall()
        state, state_sum = codec.encode_state(run_id, status, error, now)
        found = await self._retrying(
            f"update run {run_id!r}",
            lambda: self._raw_set_state(run_id, status, state, state_sum, now, owner=owner),
            run_id=run_id,
        )
        if found is None:
            raise await self._lost(run_id)
        if not found:
            raise self._not_found(run_id)

    async def list_runs(
        self, *, limit: int = 50, status: RunStatus | None = None
    ) -> list[RunRecord]:
        """The newest runs first (by creation time), optionally of one status."""
        self._check_open()
        if status is not None and status not in RUN_STATUSES:
            raise ConfigError(f"unknown run status {status!r}; use one of {RUN_STATUSES}")
        if limit <= 0:
            return []
        rows = await self._retrying("list runs", lambda: self._raw_list_runs(limit, status))
        return [self._decode_run(r) for r in rows]

    async def delete_run(self, run_id: str, *, force: bool = False) -> bool:
        """Delete a run with its steps and effects; False when it did not exist. A run
        an executor holds a live lease on (being executed now) raises :class:`RunBusy`
        unless ``force``: deleting it would lose what that executor is doing."""
        self._check_open()
        if not force:
            try:
                lease = await self.get_lease(run_id)
            except RunNotFound:
                return False
            now = self._clock.wall()
            if lease is not None and lease.live(now):
                raise RunBusy(executing_message(run_id, lease, now, self.url),
                              run_id=run_id, owner=lease.owner, expires_at=lease.expires_at)
        return await self._retrying(
            f"delete run {run_id!r}", lambda: self._raw_delete_run(run_id), run_id=run_id
        )

    async def prune(self, older_than_s: float) -> int:
        """Delete runs (any status) not updated for ``older_than_s`` seconds, except those
        an executor holds a live lease on (being executed now); return how many."""
        self._check_open()
        if older_than_s < 0:
            raise ConfigError(f"prune: older_than_s must be >= 0, got {older_than_s}")
        now = self._clock.wall()
        return await self._retrying("prune runs",
                                    lambda: self._raw_prune(now - older_than_s, now))

    # -- steps ------------------------------------------------------------------

    async def put_step(self, run_id: str, step: StepRecord, *,
                       owner: str | None = None) -> StepRecord:
        """Write a step in any status (atomically with the run's totals); return it as stored.

        Last write wins. Raises :class:`RunNotFound` when the run does not exist and
        :class:`StoreUnavailable` when the write could not be confirmed. With an
        ``owner`` (the writer's lease id; default: :data:`~shoal.stores.leases.WRITER`)
        the write is *fenced*: refused with :class:`LeaseLost`, and nothing written, when
        another executor holds the run.
        """
        self._check_open()
        if step.status not in STEP_STATUSES:
            raise ConfigError(f"unknown step status {step.status!r}; use one of {STEP_STATUSES}")
        row = codec.encode_step(run_id, step)
        owner = owner or WRITER.get()
        now = self._clock.wall()
        found = await self._retrying(
            f"save step {step.step_id!r} of run {run_id!r}",
            lambda: self._raw_put_step(run_id, row, now, owner),
            run_id=run_id, step_id=step.step_id, write=True,
        )
        if found is None:
            raise await self._lost(run_id)
        if not found:
            raise self._not_found(run_id)
        return step

    async def complete_step(self, run_id: str, step: StepRecord, *,
                            owner: str | None = None) -> StepRecord:
        """Commit a succeeded step: its result, status and usage land together, or not at all.

        When this returns the step is durable; ``finished_at`` is stamped if unset.
        """
        if step.status != "succeeded":
            raise ConfigError(
                f"complete_step needs status 'succeeded', got {step.status!r} for step "
                f"{step.step_id!r}; record other states with put_step"
            )
        if step.finished_at is None:
            step = replace(step, finished_at=self._clock.wall())
        return await self.put_step(run_id, step, owner=owner)

    async def get_step(self, run_id: str, step_id: str) -> StepRecord | None:
        self._check_open()
        row = await self._retrying(
            f"read step {step_id!r} of run {run_id!r}",
            lambda: self._raw_get_step(run_id, step_id), run_id=run_id, step_id=step_id,
        )
        return None if row is None else self._decode_step(run_id, row)

    async def get_steps(self, run_id: str, *, prefix: str = "") -> list[StepRecord]:
        """A run's steps in the order they were first written (optionally by id prefix)."""
        self._check_open()
        rows = await self._retrying(
            f"read steps of run {run_id!r}", lambda: self._raw_get_steps(run_id, prefix),
            run_id=run_id,
        )
        return [self._decode_step(run_id, r) for r in rows]

    # -- leases -----------------------------------------------------------------

    async def take_lease(
        self, run_id: str, owner: str, lease_s: float, *, force: bool = False,
        replacing: str | None = None,
    ) -> Lease:
        """Take the run's lease for ``owner`` until now + ``lease_s``, in one atomic step,
        when it is free, expired, ``owner``'s already, held by ``replacing`` (a holder
        the caller knows is dead) or ``force``. Returns the lease as it stands after:
        ``owner``'s when taken, else the live holder's. Raises :class:`RunNotFound`."""
        mode: LeaseMode = "force" if force else "take"
        lease = await self._lease(run_id, mode, owner, check_lease_s(lease_s), replacing)
        assert lease is not None  # a take leaves a holder
        return lease

    async def renew_lease(self, run_id: str, owner: str, lease_s: float) -> Lease | None:
        """Extend ``owner``'s lease to now + ``lease_s`` if ``owner`` still holds it (even
        expired: nobody took it). Returns the lease as it stands after (another holder's,
        or None when free: ``owner`` lost it either way). Raises :class:`RunNotFound`."""
        return await self._lease(run_id, "renew", owner, check_lease_s(lease_s), None)

    async def release_lease(self, run_id: str, owner: str) -> bool:
        """Free the run's lease if ``owner`` holds it. True when the run is free of any
        lease afterwards; False when another executor holds it (or the run is gone)."""
        try:
            return await self._lease(run_id, "release", owner, 0.0, None) is None
        except RunNotFound:
            return False

    async def get_lease(self, run_id: str) -> Lease | None:
        """The run's lease as stored (maybe expired: see :meth:`Lease.live`), None when
        free. Raises :class:`RunNotFound`."""
        return await self._lease(run_id, "read", "", 0.0, None)

    async def _lease(self, run_id: str, mode: LeaseMode, owner: str, lease_s: float,
                     replacing: str | None) -> Lease | None:
        self._check_open()
        now = self._clock.wall()
        holder = await self._retrying(
            f"{mode} the lease of run {run_id!r}",
            lambda: self._raw_lease(run_id, mode, owner, until=now + lease_s, now=now,
                                    replacing=replacing),
            run_id=run_id, write=mode != "read",
        )
        if holder is None:
            raise self._not_found(run_id)
        who, until = holder
        return None if who is None else Lease(run_id, who, until or 0.0)

    async def _lost(self, run_id: str) -> LeaseLost:
        """The error for a fenced write: who holds the run now."""
        try:
            holder = await self.get_lease(run_id)
        except StoreError:
            holder = None
        return LeaseLost(lost_message(run_id, holder, self._clock.wall(), self.url),
                         run_id=run_id, owner=holder.owner if holder else "",
                         expires_at=holder.expires_at if holder else 0.0)

    # -- effects ----------------------------------------------------------------

    async def get_effect(self, key: str) -> EffectRecord | None:
        self._check_open()
        row = await self._retrying(f"read effect {key!r}", lambda: self._raw_get_effect(key))
        return None if row is None else self._decode_effect(key, row)

    async def put_effect(self, effect: EffectRecord) -> EffectRecord:
        """Record an effect once: the first writer wins, and everyone gets the winner back.

        Raises :class:`RunNotFound` when the effect's run does not exist.
        """
        self._check_open()
        created = effect.created_at or self._clock.wall()
        row = codec.encode_effect(effect, created_at=created)
        outcome = await self._retrying(
            f"save effect {effect.key!r} of run {effect.run_id!r}",
            lambda: self._raw_put_effect(row),
            run_id=effect.run_id, step_id=effect.step_id, write=True,
        )
        if isinstance(outcome, bool):
            raise self._not_found(effect.run_id)
        if outcome is None:
            return self._decode_effect(effect.key, row)
        return self._decode_effect(effect.key, outcome)

    # -- backend primitives -----------------------------------------------------

    @abstractmethod
    async def _raw_open(self) -> None:
        """Connect, create or migrate the schema (raise StoreError on a newer schema)."""

    @abstractmethod
    async def _raw_close(self) -> None: ...

    @abstractmethod
    def _is_transient(self, exc: BaseException) -> bool:
        """True when retrying ``exc`` may succeed (connection lost, lock busy, timeout)."""

    @abstractmethod
    async def _raw_create_run(self, row: RunRow) -> RunRow | None:
        """Insert unless the id exists; return None when inserted, else the existing row."""

    @abstractmethod
    async def _raw_get_run(self, run_id: str) -> RunRow | None: ...

    @abstractmethod
    async def _raw_set_state(
        self, run_id: str, status: str, state: str, state_sum: str, now: float, *,
        owner: str | None,
    ) -> bool | None:
        """Replace the run's state record and status; False when the run is missing,
        None (and no write) when ``owner`` is given and another owner holds the lease."""

    @abstractmethod
    async def _raw_list_runs(self, limit: int, status: str | None) -> list[RunRow]: ...

    @abstractmethod
    async def _raw_delete_run(self, run_id: str) -> bool: ...

    @abstractmethod
    async def _raw_prune(self, cutoff: float, now: float) -> int: ...

    @abstractmethod
    async def _raw_put_step(self, run_id: str, row: StepRow, now: float,
                            owner: str | None) -> bool | None:
        """Atomically upsert the step, move the run's totals by the step's delta and
        set the run's ``updated_at``; False (and no write) when the run is missing, None
        (and no write) when ``owner`` is given and another owner holds the lease."""

    @abstractmethod
    async def _raw_lease(
        self, run_id: str, mode: LeaseMode, owner: str, *, until: float, now: float,
        replacing: str | None,
    ) -> tuple[str | None, float | None] | None:
        """Apply ``mode`` to the run's lease atomically (the rule:
        :func:`shoal.stores.leases.allows`); return ``(holder, until)`` as it stands after
        (``(None, None)`` when free), or None when the run is missing."""

    @abstractmethod
    async def _raw_get_step(self, run_id: str, step_id: str) -> StepRow | None: ...

    @abstractmethod
    async def _raw_get_steps(self, run_id: str, prefix: str) -> list[StepRow]: ...

    @abstractmethod
    async def _raw_get_effect(self, key: str) -> EffectRow | None: ...

    @abstractmethod
    async def _raw_put_effect(self, row: EffectRow) -> EffectRow | bool | None:
        """Insert unless the key exists: None when inserted, the existing row otherwise,
        False when the effect's run is missing."""

    # -- helpers ----------------------------------------------------------------

    def _check_open(self) -> None:
        if not self._opened:
            raise ConfigError(
                f"the store {self.url} is not open; use `async with store:` or `await store.open()`"
            )

    def _not_found(self, run_id: str) -> RunNotFound:
        return RunNotFound(
            f"no run {run_id!r} in {self.url}: it was never created here, or was deleted, "
            "pruned or expired; check the run id and the store URL (`shoal runs` lists the "
            "runs a store holds)"
        )

    async def _retrying(
        self, what: str, op: Callable[[], Awaitable[T]], *, run_id: str | None = None,
        step_id: str | None = None, write: bool = False,
    ) -> T:
        failures = 0
        while True:
            try:
                return await op()
            except ShoalError:
                raise
            except Exception as exc:
                if not self._is_transient(exc):
                    raise StoreError(
                        f"could not {what} in {self.url}: {type(exc).__name__}: {exc}"
                    ) from exc
                failures += 1
                if failures >= self._retry.attempts:
                    consequence = (
                        " It was NOT confirmed saved: do not continue as if it were;"
                        " resume the run once the store is back."
                        if write else ""
                    )
                    raise StoreUnavailable(
                        f"could not {what} in {self.url} after {failures} attempts: "
                        f"{type(exc).__name__}: {exc}.{consequence} Check that the store "
                        "is reachable and writable."
                    ) from exc
                await self._clock.sleep(self._retry.delay(failures))

    def _decode_run(self, row: RunRow) -> RunRecord:
        return codec.decode_run(row, self.url)

    def _decode_step(self, run_id: str, row: StepRow) -> StepRecord:
        return codec.decode_step(run_id, row, self.url)

    def _decode_effect(self, key: str, row: EffectRow) -> EffectRecord:
        return codec.decode_effect(key, row, self.url)

