"""The seam between the gateway's HTTP layer and its virtual keys.

The HTTP layer (``shoal.gateway.app``) knows only this protocol: it authenticates the
presented key, checks the model, asks for admission with the call's worst-case tokens
and cost *before* any upstream request, and settles the real usage and cost afterwards
(also when the call failed or the client went away: spend billed upstream is spend).
``shoal.gateway.keys`` implements it over the store (and Redis for several replicas);
:class:`OpenKeys` is the no-keys mode (loopback only).

Errors carry what the caller's protocol needs: the HTTP status, a machine code, and for
limits the seconds after which a retry can succeed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from shoal.types import Usage

__all__ = [
    "GatewayKeyError",
    "KeyBudgetExceeded",
    "KeyGrant",
    "KeyLimited",
    "KeyModelDenied",
    "KeyRejected",
    "KeyService",
    "OpenKeys",
    "VirtualKey",
]


@dataclass(frozen=True, slots=True)
class VirtualKey:
    """An authenticated caller. ``id`` is stable and safe to log; the secret never is."""

    id: str
    name: str
    models: tuple[str, ...] = ()  # glob patterns; empty: every model
    budget_usd: float | None = None
    period: Literal["total", "day", "month"] = "total"
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None


@dataclass(slots=True)
class KeyGrant:
    """Admission of one call for one key: what was reserved, to be settled once."""

    key: VirtualKey
    model: str
    reserved_usd: float
    reserved_tokens: int
    token: str = ""  # implementation's handle (concurrency slot, reservation id)
    settled: bool = field(default=False)


class GatewayKeyError(Exception):
    """Base of the key errors; ``status`` and ``code`` are what the gateway answers."""

    status: int = 401
    code: str = "invalid_api_key"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class KeyRejected(GatewayKeyError):
    """Missing, unknown or revoked key (401)."""

    def __init__(self, message: str, *, reason: Literal["missing", "invalid", "revoked"]) -> None:
        super().__init__(message)
        self.reason = reason


class KeyModelDenied(GatewayKeyError):
    """The key may not use this model (403)."""

    status = 403
    code = "model_not_allowed"


class KeyLimited(GatewayKeyError):
    """The key's RPM, TPM or concurrency limit is reached (429 with retry-after)."""

    status = 429
    code = "rate_limit_exceeded"


class KeyBudgetExceeded(GatewayKeyError):
    """The call could take the key over its budget (429, ``insufficient_quota``)."""

    status = 429
    code = "insufficient_quota"


class KeyService(Protocol):
    """What the gateway asks of its keys."""

    @property
    def required(self) -> bool:
        """True when callers must present a key (False only for :class:`OpenKeys`)."""
        ...

    async def authenticate(self, presented: str | None) -> VirtualKey:
        """The key for this secret; raises :class:`KeyRejected`."""
        ...

    def check_model(self, key: VirtualKey, model: str) -> None:
        """Raises :class:`KeyModelDenied` when ``model`` matches none of the key's patterns."""
        ...

    async def admit(self, key: VirtualKey, *, model: str, tokens: int,
                    max_cost_usd: float) -> KeyGrant:
        """Reserve one request, ``tokens`` (worst case) and ``max_cost_usd`` (worst case)
        atomically; raises :class:`KeyLimited` or :class:`KeyBudgetExceeded`."""
        ...

    async def settle(self, grant: KeyGrant, *, usage: Usage, cost_usd: float) -> None:
        """Replace the reservation by what was really spent (0 when nothing was billed),
        release the concurrency slot; idempotent."""
        ...

    @property
    def lost_spend(self) -> int:
        """Spend records the store refused even at close (0 until then): calls answered
        whose spend is missing from their keys."""
        ...

    async def aclose(self) -> None: ...


class OpenKeys:
    """No keys configured: every caller is ``anonymous`` with no limits (loopback only)."""

    _ANON = VirtualKey(id="anonymous", name="anonymous")

    @property
    def required(self) -> bool:
        return False

    async def authenticate(self, presented: str | None) -> VirtualKey:
        return self._ANON

    def check_model(self, key: VirtualKey, model: str) -> None:
        return None

    async def admit(self, key: VirtualKey, *, model: str, tokens: int,
                    max_cost_usd: float) -> KeyGrant:
        return KeyGrant(key, model, max_cost_usd, tokens)

    async def settle(self, grant: KeyGrant, *, usage: Usage, cost_usd: float) -> None:
        grant.settled = True

    @property
    def lost_spend(self) -> int:
        return 0

    async def aclose(self) -> None:
        return None
