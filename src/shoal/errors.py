"""shoal's one error tree.

Every failure is mapped once, at the provider edge, into one of these types;
everything above the adapters (router, agents, flows) matches only these.

::

    ShoalError
    ├── ConfigError              bad config, unknown model, misuse — never retried
    │   ├── ModelRetired(model, retired_on, replaced_by)  the provider has retired the
    │   │                        model (catalog ``retires``): refused before sending
    │   └── RequestRefused(param)  what the provider would answer 400: refused
    │                            before sending, naming the request field at fault
    └── RunError                 something went wrong while running
        ├── ProviderError(status, provider, retry_after, body, code, usage)
        │   ├── RateLimited          429 rate limit — retryable, may fail over
        │   │   └── Overloaded       529, overloaded_error (also mid-stream before any
        │   │                        output), Moonshot engine_overloaded_error, Zhipu
        │   │                        1305/1312 — the provider is busy, not our cap
        │   ├── QuotaExhausted       429/402 "insufficient quota / balance" — not
        │   │                        retried on that channel; fail over
        │   ├── ProviderUnavailable  5xx, connection refused/reset — retryable
        │   ├── ProviderTimeout      connect / read / pool timeouts — retryable
        │   ├── AuthError            401/403 — never retried, opens the channel's breaker
        │   ├── BadRequest           400/404/422 — never retried
        │   │   └── ContextOverflow  prompt longer than the window — trim, never blind retry
        │   ├── MalformedResponse    a body that is not the protocol (bad JSON, wrong shape)
        │   ├── RetryDeclined(original)  an error shoal would retry, answered with
        │   │                        ``x-should-retry: false`` — not sent to that channel
        │   │                        again; other channels may answer (``original`` is
        │   │                        the error it would have been)
        │   └── StreamInterrupted(partial_output)  a stream broken after output began:
        │                            cut, timed out, or an error event after content
        │                            (the provider's mapped error is ``__cause__``)
        ├── CircuitOpen              no channel of the model (or its fallbacks) is healthy
        ├── DeadlineExceeded         the call's total deadline passed while waiting/retrying
        ├── BudgetExceeded           turns, tokens or dollars
        ├── LoopDetected             the same tool call / state repeated k times
        ├── OutputInvalid            structured output still invalid after re-asks
        ├── ModelRefused(refusal)    the model declined to answer (OpenAI's refusal), or
        │                            the provider's content filter stopped its answer
        ├── GuardrailTripped(guardrail, stage, reason, agent)  a guardrail stopped a step
        ├── ToolFailed(tool)         a tool declared on_error="raise" failed after retries
        ├── StepFailed(step, result) a flow step under the "fail" policy stopped the run
        └── StoreError               a run store operation failed
            ├── StoreUnavailable     not reached / not written after bounded retries —
            │                        nothing was saved (retryable)
            ├── CorruptRecord(run_id, step_id, key)  a record failed its checksum
            ├── RunNotFound          no run with that id
            ├── RunExists            the id is held by a different run
            └── RunBusy(run_id, owner, expires_at)  another executor holds the run's
                │                    lease: refused before any request (wait, or force)
                └── LeaseLost        this executor's lease was taken over mid-run: it
                                     stopped before starting another step or call

``retryable`` on each class says whether the router may try the call again
(on the same or another channel). Messages say what is wrong and how to fix
it; they never contain an API key (see :mod:`shoal.secrets`). ``usage`` on a
ProviderError is what the provider reported (billed) before the failure, when it
did: a discarded answer still costs money.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from shoal.secrets import redact

if TYPE_CHECKING:
    from shoal.types import Usage

__all__ = [
    "AuthError",
    "BadRequest",
    "BudgetExceeded",
    "CircuitOpen",
    "ConfigError",
    "ContextOverflow",
    "CorruptRecord",
    "DeadlineExceeded",
    "GuardrailTripped",
    "LeaseLost",
    "LoopDetected",
    "MalformedResponse",
    "ModelRefused",
    "ModelRetired",
    "OutputInvalid",
    "Overloaded",
    "ProviderError",
    "ProviderTimeout",
    "ProviderUnavailable",
    "QuotaExhausted",
    "RateLimited",
    "RequestRefused",
    "RetryDeclined",
    "RunBusy",
    "RunError",
    "RunExists",
    "RunNotFound",
    "ShoalError",
    "StepFailed",
    "StoreError",
    "StoreUnavailable",
    "StreamInterrupted",
    "ToolFailed",
    "redact",
]

BODY_EXCERPT_CHARS = 500


class ShoalError(Exception):
    """Base of every error shoal raises. Its message never holds a known secret: string
    arguments are redacted when the error is made, and again when it is printed (a key
    registered later is masked too)."""

    retryable: bool = False

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))

    def __str__(self) -> str:
        return redact(super().__str__())


class ConfigError(ShoalError):
    """Bad configuration, unknown model or misuse of the API. Never retried."""


class ModelRetired(ConfigError):
    """The call names a model its provider has retired (the catalog's ``retires`` date
    has come): the provider would answer 404, so shoal refuses before sending.
    ``replaced_by`` is the catalog's suggested successor (None when it names none)."""

    def __init__(self, message: str, *, model: str, retired_on: str,
                 replaced_by: str | None) -> None:
        super().__init__(message)
        self.model = model
        self.retired_on = retired_on
        self.replaced_by = replaced_by


class RequestRefused(ConfigError):
    """A request shoal refuses before sending because the provider would answer it with a
    400 (a temperature while thinking on Anthropic, a schema that is not an object, a
    forced tool where only ``auto`` is taken, ...). ``param``: the field of
    :class:`~shoal.types.ChatRequest` at fault (``temperature``, ``tool_choice``,
    ``max_tokens``, ``thinking``, ``tools[2]``: that tool's schema, ``output_schema``,
    ...), so a caller (the gateway) can name it in its own terms."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class RunError(ShoalError):
    """A failure while running a call, step or flow.

    ``wasted_usage`` / ``wasted_cost_usd``: what the provider billed for answers of this
    call that were discarded (cut streams, malformed bodies), so budgets can charge it.
    ``spent_usage`` / ``spent_cost_usd``: what the agent run that failed spent before it
    did (its answered turns and the waste of failed ones), so a failed step still
    reports what it cost; None outside an agent run.
    """

    wasted_usage: Usage | None = None
    wasted_cost_usd: float = 0.0
    spent_usage: Usage | None = None
    spent_cost_usd: float = 0.0


class ProviderError(RunError):
    """A provider answered with an error, or could not be reached.

    Attributes:
        status: HTTP status (0 when no response arrived, 200 for an error inside a stream).
        provider: provider or channel name that produced it.
        retry_after: seconds the provider asked us to wait, if it said.
        body: an excerpt of the response body, secrets removed.
        code: the provider's own error type/code when it gave one.
        usage: tokens the provider reported before the failure (it billed them), or None.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        provider: str = "",
        retry_after: float | None = None,
        body: str = "",
        code: str | None = None,
        usage: Usage | None = None,
    ) -> None:
        self.status = status
        self.provider = provider
        self.retry_after = retry_after
        self.body = redact(body[:BODY_EXCERPT_CHARS])
        self.code = code
        self.usage = usage
        super().__init__(message)  # redacts it
        self.message: str = self.args[0]

    def __str__(self) -> str:
        parts = [self.message]
        if self.provider:
            parts.append(f"provider={self.provider}")
        if self.status:
            parts.append(f"status={self.status}")
        if self.code:
            parts.append(f"code={self.code}")
        if self.retry_after is not None:
            parts.append(f"retry_after={self.retry_after:g}s")
        return redact(" | ".join(parts))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self!s})"

    def _fields(self) -> dict[str, Any]:
        return {
            "status": self.status, "provider": self.provider, "retry_after": self.retry_after,
            "body": self.body, "code": self.code, "usage": self.usage,
        }

    def __reduce__(self) -> tuple[object, ...]:
        # Keep keyword fields when errors cross process boundaries (pickling).
        return (_rebuild_provider_error, (type(self), self.message, self._fields()))


def _rebuild_provider_error(
    cls: type[ProviderError], message: str, fields: dict[str, Any]
) -> ProviderError:
    return cls(message, **fields)


class RateLimited(ProviderError):
    """429 (rate limit): wait (honour retry_after) and retry or fail over."""

    retryable = True


class Overloaded(RateLimited):
    """The provider is overloaded (HTTP 529, ``overloaded_error``, Moonshot
    ``engine_overloaded_error``, Zhipu 1305/1312), as a status or as an error event
    before any output. Retry with backoff or fail over; it says nothing about our
    concurrency cap. A subclass of RateLimited, so ``except RateLimited`` still catches it."""


class QuotaExhausted(ProviderError):
    """The account's quota or balance is exhausted (429/402). Retrying this channel is futile;
    add credit or fail over to another channel."""


class ProviderUnavailable(ProviderError):
    """5xx, connection refused or reset: retryable, may fail over."""

    retryable = True


class ProviderTimeout(ProviderError):
    """Connect, read or pool timeout: retryable."""

    retryable = True


class AuthError(ProviderError):
    """401/403: the key is missing, wrong or lacks permission. Never retried."""


class BadRequest(ProviderError):
    """400/404/422: the request itself is wrong. Never retried. ``param``: the request
    field at fault, when one is (``"temperature"``), as OpenAI's error envelope names it."""

    def __init__(self, message: str, *, param: str | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)  # ProviderError's fields
        self.param = param

    def _fields(self) -> dict[str, Any]:
        return {**super()._fields(), "param": self.param}


class ContextOverflow(BadRequest):
    """The prompt (plus max_tokens) exceeds the model's context window."""


class MalformedResponse(ProviderError):
    """The provider's answer is not valid protocol (bad JSON, missing fields).

    Retryable: a garbled body is usually transient (proxy, overload)."""

    retryable = True


class RetryDeclined(ProviderError):
    """The provider answered an error shoal would retry (a 429, a 5xx, a timeout) and said
    not to: ``x-should-retry: false``, the header both official SDKs obey before their own
    rules (a proxy sends it once it has retried upstream itself). Never sent to that
    channel again, as the SDKs stop; the Router may still fail over to another channel
    or fallback model. ``original`` is the error it would have been (RateLimited,
    ProviderUnavailable, …); ``status``, ``code`` and ``retry_after`` are that error's."""

    def __init__(self, message: str, *, original: ProviderError | None = None,
                 **fields: Any) -> None:
        super().__init__(message, **fields)  # ProviderError's fields
        self.original = original

    def _fields(self) -> dict[str, Any]:
        return {**super()._fields(), "original": self.original}


class StreamInterrupted(ProviderError):
    """A stream broke after output began, or ended without its end marker.

    When the provider sent an error (an ``error`` event, a timeout, a bad chunk) after
    content, that mapped error is ``__cause__`` and its text is in the message.
    ``partial_output`` holds the text, reasoning and tool-argument text received before
    the break (to estimate billed output tokens when ``usage`` is None).

    Retryable only before the first token reached the caller; the router enforces that."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        provider: str = "",
        retry_after: float | None = None,
        body: str = "",
        code: str | None = None,
        usage: Usage | None = None,
        partial_output: str = "",
    ) -> None:
        super().__init__(message, status=status, provider=provider, retry_after=retry_after,
                         body=body, code=code, usage=usage)
        self.partial_output = partial_output

    def _fields(self) -> dict[str, Any]:
        return {**super()._fields(), "partial_output": self.partial_output}


class CircuitOpen(RunError):
    """Every channel that could serve the model (and its fallbacks) has an open breaker."""

    def __init__(self, message: str, *, retry_at: float | None = None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class DeadlineExceeded(RunError):
    """The call's total deadline passed while it waited for capacity or retried."""

    def __init__(self, message: str, *, last_error: BaseException | None = None) -> None:
        super().__init__(message)
        self.last_error = last_error


class BudgetExceeded(RunError):
    """A run's turn, token or dollar budget would be exceeded by the next call."""


class LoopDetected(RunError):
    """The agent repeated the same tool call or state too many times."""


class OutputInvalid(RunError):
    """Structured output failed validation after all re-asks."""


class ModelRefused(RunError):
    """An agent's model declined to answer: OpenAI's ``message.refusal`` or Anthropic's
    ``refusal`` stop (its words are in ``refusal``), or the provider's content filter
    stopped the answer (finish ``content_filter``: ``refusal`` then says so). Not retried
    by the agent: the same request would be refused again."""

    def __init__(self, message: str, *, refusal: str) -> None:
        super().__init__(message)
        self.refusal = refusal


class GuardrailTripped(RunError):
    """An input or output guardrail stopped the step.

    Attributes:
        guardrail: the guardrail's name.
        stage: ``"input"`` or ``"output"``.
        reason: what the guardrail said.
        agent: the agent whose input or output tripped it.
    """

    def __init__(
        self, guardrail: str, stage: Literal["input", "output"], reason: str, *, agent: str = ""
    ) -> None:
        self.guardrail = guardrail
        self.stage = stage
        self.reason = reason
        self.agent = agent
        where = f" of agent {agent!r}" if agent else ""
        super().__init__(
            f"{stage} guardrail {guardrail!r}{where} tripped: {reason or 'no reason given'}"
        )


class ToolFailed(RunError):
    """A tool declared with ``on_error="raise"`` failed after its retries."""

    def __init__(self, tool: str, message: str) -> None:
        self.tool = tool
        super().__init__(f"tool {tool!r} failed: {message}")


class StepFailed(RunError):
    """A flow step failed under the ``"fail"`` policy, so the run stopped.

    Attributes:
        step: the failed step's name.
        result: the partial :class:`~shoal.flows.flow.FlowResult` (finished steps kept).
        summary: what failed and what finished, without the message's advice (which is
            for a Python caller: a command line gives its own).
        The original error is ``__cause__``.
    """

    def __init__(self, message: str, *, step: str, result: Any = None,
                 summary: str | None = None) -> None:
        self.step = step
        self.result = result
        self.summary = summary or message
        super().__init__(message)


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


class RunBusy(StoreError):
    """Another executor (a process, a replica) holds the run's lease: it is executing the
    run now, so this one was refused before sending any request. Wait for it to finish,
    or, once it is gone, for its lease to expire; ``force=True`` (``shoal resume
    --force``) takes the run over at once, at the price of paying twice for whatever the
    holder still has in flight if it is alive.

    Attributes:
        run_id: the run.
        owner: the holder's id, ``<nonce>@<host>:<pid>:<node>``.
        expires_at: when the holder's lease lapses unless renewed (epoch seconds, by
            the store's clock).
    """

    def __init__(self, message: str, *, run_id: str = "", owner: str = "",
                 expires_at: float = 0.0) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.owner = owner
        self.expires_at = expires_at

    def __reduce__(self) -> tuple[object, ...]:
        # Keep the fields when the error crosses a process boundary (a Dask worker).
        return (_rebuild_busy, (type(self), self.args[0] if self.args else "", self.run_id,
                                self.owner, self.expires_at))


class LeaseLost(RunBusy):
    """This executor's lease on the run was taken by another one while the run went on
    (its lease lapsed — the process stalled or could not reach the store for longer than
    the lease — or the other one forced it): the run stopped before starting another
    step or model call, and its journal writes are refused. ``owner``: the new holder."""


def _rebuild_busy(cls: type[RunBusy], message: str, run_id: str, owner: str,
                  expires_at: float) -> RunBusy:
    return cls(message, run_id=run_id, owner=owner, expires_at=expires_at)
