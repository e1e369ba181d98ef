"""The run lease an executor holds while it runs a journaled run.

Only one executor — a process, a replica, a batch worker — may execute a run at a time;
a second one (another ``shoal resume``, a resume while the first process still runs) is
refused with :class:`~shoal.errors.RunBusy` before it sends a single request. The
journal (:class:`~shoal.flows.journal.StoreRecorder`) keeps one :class:`RunLeases` and:

- **takes** the run's lease in the store when the run starts (an atomic compare-and-set
  on every backend, :mod:`shoal.stores.leases`): free, expired, or held by a process
  known to be dead — on this machine (same host, boot and PID namespace) whose pid is
  gone, or in this process whose run has ended — else ``RunBusy`` naming the holder,
  its expiry and what to do. ``force`` takes it whoever holds it;
- **renews** every lease it holds every ``lease_s / 3`` in one background task. A
  renewal that finds another holder marks the run lost: the run stops with
  :class:`~shoal.errors.LeaseLost` before its next step, model call or side effect;
- **checks** before each of those: a lease not confirmed for ``2/3 · lease_s`` (the
  renewal task stalled) is renewed first, in line, so a process that was frozen past
  its lease learns it before paying for anything more;
- **releases** it when the run ends (succeeded, failed or cancelled).

The store also *fences* journal writes by the owner's id: once another executor holds
the run, a write of this one is refused (``LeaseLost``), whatever this one believes.

:func:`lease_options` sets ``force`` and ``lease_s`` for every run executed in a block,
whoever opens its journal: how a batch's items are resumed with ``shoal resume BATCH
--force`` (``shoal.scale.resume_batch`` opens each item's journal itself).

Timing (``lease_s`` = 30 s by default): a killed executor's run can be taken over at
once on the same machine, and from another machine when its lease lapses, at most
``lease_s`` after its last renewal (plus the clock difference between the hosts: the
expiry is stamped with the taker's store clock, so hosts must keep their clocks in step,
as NTP does).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import secrets
import socket
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shoal.errors import LeaseLost, RunBusy, StoreError
from shoal.stores.leases import (
    busy_message,
    check_lease_s,
    describe_owner,
    lost_message,
    parse_owner,
)
from shoal.stores.records import Lease

if TYPE_CHECKING:
    from shoal.clock import Clock
    from shoal.stores.base import Store

__all__ = ["DEFAULT_LEASE_S", "RunLeases", "holder_gone", "lease_options", "new_owner"]

DEFAULT_LEASE_S = 30.0

_log = logging.getLogger("shoal.flows.lease")
# (run_id, owner) of the leases executors of this process hold now: a holder in this
# process whose run is not here has ended (its release may have failed).
_LIVE: set[tuple[str, str]] = set()


@dataclass(frozen=True, slots=True)
class _Options:
    force: bool = False
    lease_s: float | None = None


_DEFAULTS = _Options()
_OPTIONS: ContextVar[_Options] = ContextVar("shoal_lease_options", default=_DEFAULTS)


@contextlib.contextmanager
def lease_options(*, force: bool = False, lease_s: float | None = None) -> Iterator[None]:
    """Every run executed in this block — in this task and the tasks it starts, in this
    process — takes its lease with these settings, whatever its journal was given:
    ``force`` takes each lease whoever holds it, ``lease_s`` (None: the journal's) sets
    how long each lasts. What ``shoal resume BATCH --force --lease-s S`` wraps a batch's
    resume in, as its items' journals are opened by the executor::

        with lease_options(force=True):
            await LocalExecutor(store=url).resume("B", flow)

    The workers of a ``DaskExecutor`` run elsewhere and use their own defaults. Blocks
    nest: an inner one adds ``force`` and may set ``lease_s`` again."""
    outer = _OPTIONS.get()
    token = _OPTIONS.set(_Options(
        force or outer.force, outer.lease_s if lease_s is None else check_lease_s(lease_s)))
    try:
        yield
    finally:
        _OPTIONS.reset(token)


@functools.cache
def _node() -> str:
    """What a machine and PID namespace share (hash of host, boot id, PID namespace).
    Where that cannot be known (not Linux), a token of this process alone: then only
    this process judges its own executors, and others wait for a lease's expiry."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return "x" + secrets.token_hex(4)
    text = f"{socket.gethostname()}|{boot}|{pid_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def new_owner() -> str:
    """A fresh executor id: ``<nonce>@<host>:<pid>:<node>``."""
    host = socket.gethostname().replace(":", "-").replace("@", "-") or "localhost"
    return f"{secrets.token_hex(4)}@{host}:{os.getpid()}:{_node()}"


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] in (["Z"], ["X"])


def holder_gone(run_id: str, owner: str) -> bool:
    """Whether the executor ``owner`` is known to be dead: it ran in this PID namespace of
    this machine and its process is gone (or a zombie), or it ran in this process and its
    run has ended. Unknown (another machine, a pid reused by a live process): False."""
    parsed = parse_owner(owner)
    if parsed is None or not parsed[3] or parsed[3] != _node():
        return False
    pid = parsed[2]
    if pid == os.getpid():
        return (run_id, owner) not in _LIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, another user's
        return False
    return _zombie(pid)


@dataclass(slots=True)
class _Held:
    confirmed_until: float  # clock.now() until which the store surely keeps our lease
    lost: LeaseLost | None = None


class RunLeases:
    """The leases one executor (a journal) holds. See the module docstring.

    Args:
        store: the open store the runs live in.
        lease_s: how long a lease lasts without renewal (renewed every ``lease_s / 3``).
        clock: sleeps between renewals, and the age of the last confirmation.
        force: take every lease whoever holds it (``shoal resume --force``).

    Inside a :func:`lease_options` block, its ``force`` and ``lease_s`` win.
    """

    def __init__(self, store: Store, *, lease_s: float = DEFAULT_LEASE_S,
                 clock: Clock, force: bool = False) -> None:
        options = _OPTIONS.get()
        self.store = store
        self.lease_s = check_lease_s(lease_s if options.lease_s is None else options.lease_s)
        self.clock = clock
        self.force = force or options.force
        self.owner = new_owner()
        self._held: dict[str, _Held] = {}
        self._renewer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"RunLeases({self.owner}, lease_s={self.lease_s:g}, held={sorted(self._held)})"

    @property
    def held(self) -> list[str]:
        """The runs whose lease this executor holds now."""
        return list(self._held)

    async def take(self, run_id: str, *, batch: str | None = None,
                   agent: bool = False) -> None:
        """Take the run's lease, or raise :class:`RunBusy` naming its live holder and
        how to take the run over: for an item of batch ``batch``, by resuming the batch;
        for an ``agent`` run journaled without a flow, by running the agent again."""
        if run_id in self._held:  # this very executor runs it already (flow.run twice)
            mine = Lease(run_id, self.owner, self.clock.wall() + self.lease_s)
            raise RunBusy(busy_message(run_id, mine, self.clock.wall(), self.store.url,
                                       batch=batch, agent=agent),
                          run_id=run_id, owner=self.owner, expires_at=mine.expires_at)
        sent = self.clock.now()
        _LIVE.add((run_id, self.owner))  # before the store says so: never "gone" to a peer
        try:
            lease = await self.store.take_lease(run_id, self.owner, self.lease_s,
                                                force=self.force)
            if lease.owner != self.owner and holder_gone(run_id, lease.owner):
                _log.info("run %r: its executor %s is gone; taking its lease over", run_id,
                          describe_owner(lease.owner))
                lease = await self.store.take_lease(run_id, self.owner, self.lease_s,
                                                    replacing=lease.owner)
        except BaseException:
            _LIVE.discard((run_id, self.owner))
            with contextlib.suppress(StoreError):  # in case the store took it for us
                await self.store.release_lease(run_id, self.owner)
            raise
        if lease.owner != self.owner:
            _LIVE.discard((run_id, self.owner))
            raise RunBusy(busy_message(run_id, lease, self.clock.wall(), self.store.url,
                                       batch=batch, agent=agent),
                          run_id=run_id, owner=lease.owner, expires_at=lease.expires_at)
        self._held[run_id] = _Held(sent + self.lease_s)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_all(),
                                                name=f"shoal-lease:{self.owner}")

    async def check(self, run_id: str) -> None:
        """Before a step, a model call or a side effect: raise :class:`LeaseLost` if the
        run was taken over; confirm the lease with the store first when the renewals
        have fallen behind (a store that cannot be reached then raises its error)."""
        held = self._held.get(run_id)
        if held is None:
            return  # not a leased run (a journal used without run_started/agent_run)
        if held.lost is None and self.clock.now() >= held.confirmed_until - self.lease_s / 3:
            await self._renew(run_id, held)
        if held.lost is not None:
            raise _copy(held.lost)

    def lost(self, run_id: str) -> LeaseLost | None:
        """The takeover that stopped the run, if another executor took it over."""
        held = self._held.get(run_id)
        return None if held is None else held.lost

    def lose(self, run_id: str, exc: LeaseLost) -> None:
        """Note a takeover found elsewhere (a fenced journal write)."""
        held = self._held.get(run_id)
        if held is not None and held.lost is None:
            held.lost = exc

    async def release(self, run_id: str) -> None:
        """The run ended: free its lease (unless it was taken over). Never raises a store
        error: a lease that could not be freed lapses within ``lease_s``, and this
        process's own later executors take it over at once."""
        held = self._held.pop(run_id, None)
        _LIVE.discard((run_id, self.owner))
        if not self._held and self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        if held is None or held.lost is not None:
            return
        try:
            await self.store.release_lease(run_id, self.owner)
        except StoreError as exc:
            # ``store_note``: what the CLI tells once after its own output (cli/store_notes.py)
            _log.warning("run %r: could not release its lease (%s); it lapses within %gs",
                         run_id, exc, self.lease_s,
                         extra={"store_note": ("lease", run_id, self.lease_s)})

    async def _renew(self, run_id: str, held: _Held) -> None:
        sent = self.clock.now()
        lease = await self.store.renew_lease(run_id, self.owner, self.lease_s)
        if lease is not None and lease.owner == self.owner:
            held.confirmed_until = max(held.confirmed_until, sent + self.lease_s)
            return
        if held.lost is None:
            held.lost = LeaseLost(self._lost_text(run_id, lease), run_id=run_id,
                                  owner=lease.owner if lease else "",
                                  expires_at=lease.expires_at if lease else 0.0)
            _log.warning("%s", held.lost)

    def _lost_text(self, run_id: str, lease: Lease | None) -> str:
        return lost_message(run_id, lease, self.clock.wall(), self.store.url)

    async def _renew_all(self) -> None:
        """Renew every held lease every ``lease_s / 3`` until none is held."""
        while self._held:
            await self.clock.sleep(self.lease_s / 3)
            for run_id, held in list(self._held.items()):
                if held.lost is not None or run_id not in self._held:
                    continue
                try:
                    await self._renew(run_id, held)
                except StoreError as exc:  # check() confirms in line before the next step
                    _log.warning("run %r: could not renew its lease: %s", run_id, exc)


def _copy(exc: LeaseLost) -> LeaseLost:
    """A fresh error per raise (one exception object raised twice mixes tracebacks)."""
    return LeaseLost(str(exc), run_id=exc.run_id, owner=exc.owner, expires_at=exc.expires_at)

