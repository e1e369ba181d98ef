"""Hosts for the cluster tests: network namespaces on one bridge, made and removed here.

    with Hosts(["sched", "w1", "w2", "w3"]) as hosts:
        hosts.addr("w1")          # 10.x.y.11: the namespace's own address
        hosts.host_addr           # 10.x.y.1: this (root) namespace, on the bridge
        hosts.popen("w1", [...])  # a process inside the namespace

Every namespace has one veth pair, its outer end on a bridge that carries
``host_addr``, so traffic flows only between the namespace addresses and this host's
bridge address. Where namespaces cannot be made (``fallback=True``), every role runs
on 127.0.0.1 instead (``hosts.isolated`` says which). Teardown kills what ``popen``
started (by PID) and deletes every namespace, veth and the bridge, even on failure.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import uuid
from collections.abc import Sequence
from typing import IO, Any

__all__ = ["Hosts", "can_make_namespaces"]


def can_make_namespaces() -> str | None:
    """``None`` when this process can make namespaces, else why not."""
    if os.environ.get("SHOAL_TEST_NO_NETNS"):
        return "SHOAL_TEST_NO_NETNS is set"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


class Hosts:
    """Namespaced hosts for ``roles`` (or 127.0.0.1 for all when namespaces fail and
    ``fallback`` is set)."""

    def __init__(self, roles: Sequence[str], *, fallback: bool = True) -> None:
        self.roles = list(roles)
        self.fallback = fallback
        tag = uuid.uuid4().hex[:5]
        self._bridge = f"shb{tag}"
        self._ns = {r: f"shoal{tag}{i}" for i, r in enumerate(self.roles)}
        self._veth = {r: f"shv{tag}{i}" for i, r in enumerate(self.roles)}
        net = f"10.{random.randint(180, 250)}.{random.randint(1, 250)}"
        self.host_addr = f"{net}.1"
        self._addr = {r: f"{net}.{10 + i}" for i, r in enumerate(self.roles)}
        self._procs: list[subprocess.Popen[Any]] = []
        self._made: list[tuple[str, str]] = []
        self.isolated = False
        self.why_not: str | None = None

    def addr(self, role: str) -> str:
        return self._addr[role] if self.isolated else "127.0.0.1"

    @property
    def service_addr(self) -> str:
        """Where services the namespaces use must listen."""
        return self.host_addr if self.isolated else "127.0.0.1"

    def __enter__(self) -> Hosts:
        reason = can_make_namespaces()
        if reason is None:
            try:
                self._make()
                self.isolated = True
            except (subprocess.CalledProcessError, OSError) as exc:
                err = getattr(exc, "stderr", b"") or b""
                reason = f"{exc} {err.decode(errors='replace').strip()}"
                self._remove()
        if reason is not None:
            self.why_not = reason
            if not self.fallback:
                raise RuntimeError(f"cannot make network namespaces: {reason}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        self._remove()

    def _make(self) -> None:
        _ip("link", "add", self._bridge, "type", "bridge")
        self._made.append(("link", self._bridge))
        _ip("addr", "add", f"{self.host_addr}/24", "dev", self._bridge)
        _ip("link", "set", self._bridge, "up")
        for role in self.roles:
            ns, veth = self._ns[role], self._veth[role]
            _ip("netns", "add", ns)
            self._made.append(("netns", ns))
            _ip("link", "add", f"{veth}h", "type", "veth", "peer", "name", f"{veth}n")
            self._made.append(("link", f"{veth}h"))
            _ip("link", "set", f"{veth}n", "netns", ns)
            _ip("link", "set", f"{veth}h", "master", self._bridge)
            _ip("link", "set", f"{veth}h", "up")
            _ip("-n", ns, "addr", "add", f"{self._addr[role]}/24", "dev", f"{veth}n")
            _ip("-n", ns, "link", "set", f"{veth}n", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def _remove(self) -> None:
        for kind, name in reversed(self._made):
            with contextlib.suppress(subprocess.CalledProcessError, OSError,
                                     subprocess.TimeoutExpired):
                if kind == "netns":
                    _ip("netns", "del", name)
                else:
                    _ip("link", "del", name)
        self._made.clear()

    def leftovers(self) -> list[str]:
        """Namespaces or links of this instance still present (teardown checks)."""
        if shutil.which("ip") is None:
            return []
        found = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                               check=False).stdout
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                               check=False).stdout
        mine = [self._bridge, *self._veth.values(), *self._ns.values()]
        return [m for m in mine if m in found or m in names]

    def popen(self, role: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
              stdout: int | IO[Any] | None = subprocess.DEVNULL,
              stderr: int | IO[Any] | None = subprocess.DEVNULL) -> subprocess.Popen[Any]:
        """Start ``argv`` on ``role``'s host (inside its namespace when isolated)."""
        prefix = ["ip", "netns", "exec", self._ns[role]] if self.isolated else []
        proc = subprocess.Popen(
            [*prefix, *argv], env=env, stdout=stdout, stderr=stderr, start_new_session=True)
        self._procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self._procs.clear()
