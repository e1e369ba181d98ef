"""The simulator's configuration: limits, per-model latency profiles and fault rates.

Plain frozen dataclasses, validated on construction (a bad value raises
:class:`~shoal.errors.ConfigError` naming the field). ``SimConfig.from_dict``
builds one from JSON/TOML data (the ``/_sim/config`` endpoint, ``--config``).
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from shoal.errors import ConfigError

__all__ = [
    "FAULT_NAMES",
    "RETRY_AFTER_FORMS",
    "SCENARIOS",
    "STYLES",
    "Faults",
    "ModelProfile",
    "SimConfig",
    "Style",
    "check_fault",
    "scenario_faults",
]

# Provider styles (shoal.sim.styles): each imitates one provider's refusals and shapes;
# "permissive" is the historical, refuse-nothing behaviour.
Style = Literal[
    "openai", "anthropic", "deepseek", "moonshot", "zhipu", "minimax", "gemini", "permissive"
]
STYLES: tuple[str, ...] = (
    "openai", "anthropic", "deepseek", "moonshot", "zhipu", "minimax", "gemini", "permissive",
)  # fmt: skip

# Names accepted by ``SimServer.script`` and the ``x-sim-fault`` header. Besides these,
# any HTTP error status ("400", "404", "429", "500", "503", "529", ...) and "delay:<seconds>".
FAULT_NAMES: frozenset[str] = frozenset(
    {
        "ok",
        "hang",
        "cut",
        "truncated",
        "malformed",
        "schema_invalid",
        "stream_error",
        "quota",
        "context_overflow",
        "refusal",
        "no_done",
        "crlf",
        "data_nospace",
        "json_body",
    }
)
_DELAY = re.compile(r"^delay:(\d+(?:\.\d*)?|\.\d+)$")
# "code:<code>" (a provider's business error code, e.g. "code:1301", "code:slow_down") and
# "finish:<reason>" (an answer ended by that finish reason); which style has which is
# checked per request (shoal.sim.provider_faults).
_PROVIDER_FAULT = re.compile(r"^(?:code:[A-Za-z0-9_]{1,40}|finish:[a-z_]{1,40})$")
# "<status>:no_retry": that error status with ``x-should-retry: false``.
_NO_RETRY = re.compile(r"^[45]\d\d:no_retry$")
# Forms of a 429's Retry-After (fault names "429:<form>"; see limits.retry_after_form_headers).
RETRY_AFTER_FORMS: tuple[str, ...] = ("seconds", "float", "date", "ms", "none")


def check_fault(name: str) -> str:
    """Return *name* if it is a fault the simulator knows, else raise ``ConfigError``."""
    if name in FAULT_NAMES or _DELAY.match(name):
        return name
    if name.startswith("429:") and name[4:] in RETRY_AFTER_FORMS:
        return name
    if name.isdigit() and 400 <= int(name) <= 599:
        return name
    if _PROVIDER_FAULT.match(name) or _NO_RETRY.match(name):
        return name
    known = ", ".join(sorted(FAULT_NAMES))
    raise ConfigError(
        f"unknown simulator fault {name!r}: use one of {known}, an HTTP error status "
        "such as '429' or '503', '429:<form>' (form: " + ", ".join(RETRY_AFTER_FORMS)
        + "), '<status>:no_retry' (that error with x-should-retry: false), "
        "'code:<provider code>', 'finish:<reason>', or 'delay:<seconds>'"
    )


def _rate(owner: str, name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{owner}.{name} must be between 0 and 1, got {value!r}")


def _positive(owner: str, name: str, value: float | None, *, allow_zero: bool = True) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{owner}.{name} must be {bound}, got {value!r}")


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """How one model (or every model, under ``"*"``) answers.

    Timing: the first token arrives after ``ttft_s`` (default: ``latency_s``) plus a
    uniform random ``[0, jitter_s)``; the remaining tokens follow at ``tokens_per_s``
    (``None`` = all at once). A non-streamed answer arrives whole after the same total,
    so with the defaults its latency is exactly ``latency_s``.
    ``output_tokens`` is how many tokens a text answer has (capped by the request's
    max tokens); ``context_window`` rejects longer prompts with the provider's 400.
    ``tool_calls`` is how many (parallel) tool calls a tool-calling turn makes.
    """

    latency_s: float = 0.0
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    output_tokens: int = 20
    context_window: int = 128_000
    jitter_s: float = 0.0
    tool_calls: int = 1

    def __post_init__(self) -> None:
        _positive("ModelProfile", "latency_s", self.latency_s)
        _positive("ModelProfile", "ttft_s", self.ttft_s)
        _positive("ModelProfile", "tokens_per_s", self.tokens_per_s, allow_zero=False)
        _positive("ModelProfile", "jitter_s", self.jitter_s)
        if self.output_tokens < 1:
            raise ConfigError(f"ModelProfile.output_tokens must be >= 1, got {self.output_tokens}")
        if self.context_window < 1:
            raise ConfigError(
                f"ModelProfile.context_window must be >= 1, got {self.context_window}"
            )
        if self.tool_calls < 1:
            raise ConfigError(f"ModelProfile.tool_calls must be >= 1, got {self.tool_calls}")

    @property
    def first_token_s(self) -> float:
        return self.latency_s if self.ttft_s is None else self.ttft_s


@dataclass(frozen=True, slots=True)
class Faults:
    """Random faults, each a probability per request, drawn from the seeded RNG.

    One uniform draw per request picks at most one fault (the rates must sum to <= 1),
    so the k-th request of a run always gets the same fault under the same seed.
    ``quota_exhausted`` and ``auth_fail`` apply to every request while set.
    ``error_statuses`` (when set) splits ``error_rate`` evenly among those statuses
    instead of ``error_status`` (a random 529 is sent as 503 on the OpenAI endpoint);
    ``retry_after_forms`` splits ``rate_limit_rate`` evenly among those Retry-After
    forms (``limits.retry_after_form_headers``). A hang lasts until the client goes away,
    the server stops, or ``hang_max_s`` passes (then the connection closes unanswered).
    """

    error_rate: float = 0.0
    error_status: int = 500
    error_statuses: tuple[int, ...] = ()
    rate_limit_rate: float = 0.0
    retry_after_forms: tuple[str, ...] = ()
    hang_rate: float = 0.0
    hang_max_s: float = 600.0
    cut_rate: float = 0.0
    malformed_rate: float = 0.0
    schema_invalid_rate: float = 0.0
    stream_error_rate: float = 0.0
    quota_exhausted: bool = False
    auth_fail: bool = False

    def __post_init__(self) -> None:
        for name, _ in self.random_faults():
            _rate("Faults", name, getattr(self, name))
        if sum(rate for _, rate in self.table()) > 1.0 + 1e-9:
            raise ConfigError("Faults: the fault rates must add up to at most 1")
        for name, statuses in (("error_status", (self.error_status,)),
                               ("error_statuses", self.error_statuses)):  # fmt: skip
            for status in statuses:
                if not isinstance(status, int) or not 500 <= status <= 599:
                    raise ConfigError(
                        f"Faults.{name} must be a 5xx status (500, 502, 503, 529), "
                        f"got {status!r}"
                    )
        for form in self.retry_after_forms:
            if form not in RETRY_AFTER_FORMS:
                raise ConfigError(
                    f"Faults.retry_after_forms: unknown form {form!r}; "
                    f"use some of {', '.join(RETRY_AFTER_FORMS)}"
                )
        _positive("Faults", "hang_max_s", self.hang_max_s, allow_zero=False)

    def random_faults(self) -> tuple[tuple[str, str], ...]:
        """(rate field, fault name) pairs, in the order the draw checks them."""
        return (
            ("error_rate", str(self.error_status)),
            ("rate_limit_rate", "429"),
            ("hang_rate", "hang"),
            ("cut_rate", "cut"),
            ("malformed_rate", "malformed"),
            ("schema_invalid_rate", "schema_invalid"),
            ("stream_error_rate", "stream_error"),
        )

    def table(self) -> tuple[tuple[str, float], ...]:
        """(fault name, rate) for the non-zero random faults."""
        out: list[tuple[str, float]] = []
        for attr, fault in self.random_faults():
            rate = float(getattr(self, attr))
            if rate <= 0:
                continue
            if attr == "error_rate" and self.error_statuses:
                split = [str(s) for s in self.error_statuses]
            elif attr == "rate_limit_rate" and self.retry_after_forms:
                split = [f"429:{form}" for form in self.retry_after_forms]
            else:
                split = [fault]
            out.extend((name, rate / len(split)) for name in split)
        return tuple(out)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything the simulator does, as one value (change it live with ``SimServer.configure``).

    ``max_concurrency``: requests admitted at once; one more gets 429 with
    ``cap_retry_after_s``. ``rpm``/``tpm``: per-window caps (sliding window of
    ``rate_window_s`` seconds over admitted requests; tokens = prompt + completion).
    ``models``: profiles by model name or glob (``"gpt-4*"``), ``"*"`` as the default.
    ``style``: the provider imitated, its refusals and shapes (see :mod:`shoal.sim.styles`;
    a URL prefix ``/style/<name>`` overrides it per request).
    ``api_keys``: when set, only these keys are accepted (others get 401).
    ``log_size``: how many per-request records the stats keep (oldest dropped first).
    ``today``: the ISO date retirements are judged on (:mod:`shoal.sim.retired_models`);
    None: the clock's UTC date.
    """

    seed: int = 0
    max_concurrency: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    models: Mapping[str, ModelProfile] = field(default_factory=lambda: {"*": ModelProfile()})
    faults: Faults = field(default_factory=Faults)
    style: str = "openai"  # one of STYLES (a plain str so callers can parametrize it)
    cap_retry_after_s: float = 1.0
    fault_retry_after_s: float = 1.0
    rate_window_s: float = 60.0
    api_keys: tuple[str, ...] | None = None
    log_size: int = 100_000
    today: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_concurrency", "rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"SimConfig.{name} must be >= 1 or None, got {value!r}")
        if self.style not in STYLES:
            raise ConfigError(
                f"SimConfig.style must be one of {', '.join(STYLES)}, got {self.style!r}"
            )
        _positive("SimConfig", "cap_retry_after_s", self.cap_retry_after_s)
        _positive("SimConfig", "fault_retry_after_s", self.fault_retry_after_s)
        _positive("SimConfig", "rate_window_s", self.rate_window_s, allow_zero=False)
        if self.log_size < 0:
            raise ConfigError(f"SimConfig.log_size must be >= 0, got {self.log_size}")
        day: object = self.today
        if isinstance(day, datetime.date):  # a TOML date (today = 2026-12-01)
            object.__setattr__(self, "today", day.isoformat())
        if self.today is not None:
            try:
                datetime.date.fromisoformat(self.today)
            except (TypeError, ValueError):
                raise ConfigError(f"SimConfig.today must be an ISO date such as '2026-12-01', "
                                  f"got {self.today!r}") from None
        for key, profile in self.models.items():
            if not isinstance(profile, ModelProfile):
                raise ConfigError(f"SimConfig.models[{key!r}] must be a ModelProfile")

    def profile(self, model: str) -> ModelProfile:
        """The profile for *model*: exact name, then the first matching glob, then ``"*"``."""
        exact = self.models.get(model)
        if exact is not None:
            return exact
        for pattern, profile in self.models.items():
            if pattern != "*" and fnmatch.fnmatchcase(model, pattern):
                return profile
        return self.models.get("*") or _DEFAULT_PROFILE

    def replace(self, **changes: Any) -> SimConfig:
        """A copy with *changes*; dicts are accepted for ``faults`` and ``models`` values."""
        return SimConfig.from_dict(changes, base=self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: SimConfig | None = None) -> SimConfig:
        """Build from JSON/TOML-shaped data, starting from *base* (or the defaults)."""
        base = base or cls()
        if "scenario" in data:  # a named fault mix; a [faults] table refines it
            data = dict(data)
            base = dataclasses.replace(base, faults=scenario_faults(str(data.pop("scenario"))))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown simulator setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        changes: dict[str, Any] = dict(data)
        if "faults" in changes:
            changes["faults"] = _faults(changes["faults"], base.faults)
        if "models" in changes:
            changes["models"] = _models(changes["models"])
        if "api_keys" in changes and changes["api_keys"] is not None:
            changes["api_keys"] = tuple(cast(Iterable[str], changes["api_keys"]))
        try:
            return dataclasses.replace(base, **changes)
        except TypeError as exc:
            raise ConfigError(f"bad simulator setting: {exc}") from exc

    @classmethod
    def from_toml(cls, path: str | Path) -> SimConfig:
        """Load a scenario file: top-level settings, ``[faults]``, ``[models."<name>"]``."""
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read simulator scenario {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"simulator scenario {path} is not valid TOML: {exc}") from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``GET /_sim/config`` returns)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["faults"] = dataclasses.asdict(self.faults)
        out["models"] = {k: dataclasses.asdict(v) for k, v in self.models.items()}
        out["api_keys"] = None if self.api_keys is None else ["***"] * len(self.api_keys)
        return out


_DEFAULT_PROFILE = ModelProfile()

# Named fault mixes: ``shoal sim --scenario storm``, ``scenario = "storm"`` in a scenario
# file or ``POST /_sim/config``, ``scenario_faults("storm")`` from Python.
SCENARIOS: Mapping[str, Faults] = {
    "calm": Faults(),
    # A bad hour at the providers (issue 8): 20% 5xx, 10% 429 in mixed Retry-After
    # forms, 5% hangs, 2% cut streams, 2% malformed bodies.
    "storm": Faults(
        error_rate=0.20, error_statuses=(500, 502, 503, 529),
        rate_limit_rate=0.10, retry_after_forms=RETRY_AFTER_FORMS,
        hang_rate=0.05, cut_rate=0.02, malformed_rate=0.02,
    ),
}  # fmt: skip


def scenario_faults(name: str) -> Faults:
    """The :class:`Faults` of the named scenario (``"storm"``, ``"calm"``)."""
    try:
        return SCENARIOS[name]
    except KeyError:
        known = ", ".join(sorted(SCENARIOS))
        raise ConfigError(f"unknown simulator scenario {name!r}; known: {known}") from None


def _faults(value: object, base: Faults) -> Faults:
    if isinstance(value, Faults):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError("SimConfig.faults must be a Faults or a table of fault settings")
    known = {f.name for f in dataclasses.fields(Faults)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(
            f"unknown fault setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    changes = dict(value)
    for name in ("error_statuses", "retry_after_forms"):  # JSON/TOML give lists
        if isinstance(changes.get(name), list):
            changes[name] = tuple(changes[name])
    try:
        return dataclasses.replace(base, **changes)
    except TypeError as exc:
        raise ConfigError(f"bad fault setting: {exc}") from exc


def _models(value: object) -> dict[str, ModelProfile]:
    if not isinstance(value, Mapping):
        raise ConfigError("SimConfig.models must map model names (or '*') to profiles")
    out: dict[str, ModelProfile] = {}
    known = {f.name for f in dataclasses.fields(ModelProfile)}
    for name, profile in value.items():
        if isinstance(profile, ModelProfile):
            out[str(name)] = profile
            continue
        if not isinstance(profile, Mapping):
            raise ConfigError(f"SimConfig.models[{name!r}] must be a table of profile settings")
        unknown = sorted(set(profile) - known)
        if unknown:
            raise ConfigError(
                f"unknown model profile setting(s) {', '.join(unknown)} for {name!r}; "
                f"known: {', '.join(sorted(known))}"
            )
        try:
            out[str(name)] = ModelProfile(**profile)
        except TypeError as exc:
            raise ConfigError(f"bad model profile for {name!r}: {exc}") from exc
    return out
