"""The run lease as every store keeps it: who executes a run, until when.

A run being executed carries a lease in its store record: ``lease_owner`` (the
executor's id) and ``lease_until`` (epoch seconds, stamped by the taker's store clock).
Each backend applies a :data:`LeaseMode` in one atomic step (a SQLite transaction, a
PostgreSQL ``UPDATE`` whose new values are computed from the row it locked, a Redis Lua
script), so two executors racing for a run cannot both win:

- ``take``: set ``(owner, until)`` when the lease is free, expired (``until <= now``),
  already ``owner``'s, or held by ``replacing`` (a holder the taker knows is dead);
- ``force``: set it whoever holds it;
- ``renew``: set it only while ``owner`` still holds it (expired or not: nobody took it);
- ``release``: clear it only while ``owner`` holds it;
- ``read``: change nothing.

Every mode answers with the lease as it stands afterwards, so the caller compares the
holder with itself. Journal writes carry the writer's id too and are refused
(*fenced*) once another executor holds the run: see :meth:`Store.put_step`. The id is
an ``owner=`` argument, or, for every write made inside ``with writing_as(owner):`` in
that task, this context's :data:`WRITER` (so the journal's calls keep the store's
two-argument signatures, which wrappers of a store rely on).

An owner id is ``<nonce>@<host>:<pid>:<node>``: a random nonce per executor, the host
name and process id for the messages, and ``node`` (a hash of the host name, boot id
and PID namespace) so that a taker on the same machine can tell a dead holder from a
live one (:mod:`shoal.flows.lease`).
"""

from __future__ import annotations

import contextlib
import datetime
import math
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Literal

from shoal.errors import ConfigError
from shoal.stores.records import Lease

__all__ = ["WRITER", "LeaseMode", "allows", "busy_message", "check_lease_s", "describe_owner",
           "lost_message", "parse_owner", "writing_as"]

LeaseMode = Literal["take", "force", "renew", "release", "read"]
#: the executor on whose behalf this task writes (see :func:`writing_as`)
WRITER: ContextVar[str | None] = ContextVar("shoal_lease_writer", default=None)


@contextlib.contextmanager
def writing_as(owner: str) -> Iterator[None]:
    """Fence the store writes made in this block (in this task) by ``owner``."""
    token = WRITER.set(owner)
    try:
        yield
    finally:
        WRITER.reset(token)


def check_lease_s(lease_s: float) -> float:
    """``lease_s`` as a float, or ConfigError when it is not a positive finite number."""
    value = float(lease_s)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"lease_s must be a positive number of seconds, got {lease_s!r}")
    return value


def allows(mode: LeaseMode, holder: str | None, until: float | None, *, owner: str,
           now: float, replacing: str | None) -> bool:
    """Whether ``mode`` by ``owner`` changes a lease held by ``holder`` until ``until``
    (the rule the SQLite store applies; PostgreSQL and Redis spell it in SQL and Lua)."""
    if mode == "force":
        return True
    if mode in ("renew", "release"):
        return holder == owner
    if mode == "take":
        return (holder is None or holder == owner or until is None or until <= now
                or (replacing is not None and holder == replacing))
    return False


def parse_owner(owner: str) -> tuple[str, str, int, str] | None:
    """``(nonce, host, pid, node)`` of an owner id, or None for one shoal did not make."""
    head, sep, rest = owner.partition("@")
    parts = rest.rsplit(":", 2)
    if not sep or len(parts) != 3 or not parts[1].isdigit():
        return None
    return head, parts[0], int(parts[1]), parts[2]


def describe_owner(owner: str) -> str:
    """``a1b2c3d4@web-2 (pid 4121)`` for messages."""
    parsed = parse_owner(owner)
    if parsed is None:
        return repr(owner)
    nonce, host, pid, _ = parsed
    return f"{nonce}@{host} (pid {pid})"


def _when(at: float, now: float) -> str:
    stamp = datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    left = at - now
    return f"{stamp} ({left:.0f}s from now)" if left >= 0 else f"{stamp} ({-left:.0f}s ago)"


def busy_message(run_id: str, holder: Lease, now: float, where: str, *,
                 batch: str | None = None, agent: bool = False) -> str:
    """Why a run cannot be executed here: who holds it, until when, and what to do. An
    item of batch ``batch`` is taken over by resuming the batch (which records the
    item's outcome); an ``agent`` run journaled without a flow by running the agent again
    (``shoal resume`` rebuilds flows)."""
    if batch is not None:
        what = f"run {run_id!r} (an item of batch {batch!r})"
        takeover = (f"resume its batch with --force (`shoal resume {batch} --force`; add "
                    "`--cluster local` if the batch ran on a cluster: its items then run here)")
    elif agent:
        what = f"agent run {run_id!r}"
        takeover = ("run the agent on it again with a journal that forces the lease "
                    "(`Runner(client, recorder=StoreRecorder(store, force=True))`)")
    else:
        what = f"run {run_id!r}"
        takeover = f"resume with force=True (`shoal resume {run_id} --force`)"
    return (
        f"{what} in {where} is being executed by another process: "
        f"{describe_owner(holder.owner)} holds its lease until {_when(holder.expires_at, now)}"
        " and renews it while it runs. Nothing was run here and no model was called. Wait "
        f"for it to finish (`shoal show {run_id}` shows its progress); if that process is "
        "gone, its lease lapses by then and a resume takes the run over (at once on the "
        f"same machine). To take the run over now, {takeover}: if the holder is still "
        "alive, the calls it has in flight are paid twice."
    )


def executing_message(run_id: str, holder: Lease, now: float, where: str) -> str:
    """Why a run is not deleted: an executor holds its lease, so it is running now."""
    return (
        f"run {run_id!r} in {where} is being executed: {describe_owner(holder.owner)} "
        f"holds its lease until {_when(holder.expires_at, now)}, and deleting it now "
        "would lose what that run is doing. Wait for it to end (`shoal show "
        f"{run_id}`), or delete it anyway with force (`shoal delete {run_id} --force`)"
    )


def lost_message(run_id: str, holder: Lease | None, now: float, where: str) -> str:
    """Why an executor stopped: another one took its run over."""
    who = (f"{describe_owner(holder.owner)}, whose lease runs until "
           f"{_when(holder.expires_at, now)}" if holder is not None
           else "another executor (which has released it since)")
    return (
        f"run {run_id!r} in {where} was taken over by {who}: this executor's lease lapsed "
        "(it was not renewed for longer than the lease: the process stalled, or could not "
        "reach the store) or was forced. This executor stopped before starting another "
        "step or model call, and the store refuses its journal writes; the new holder goes "
        f"on with the run (`shoal show {run_id}`)."
    )
