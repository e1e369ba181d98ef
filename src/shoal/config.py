"""Typed configuration: channels (endpoint + key + limits) and models (catalog + overrides).

The shipped catalog (``shoal/catalog/models.toml``) defines providers and models;
a user's ``shoal.toml`` adds or overrides both. The environment is read only
here, at the edge (API keys by the *name* of their variable; the key itself is
kept in a ``SecretStr`` and never printed).
"""

from __future__ import annotations

import datetime
import difflib
import functools
import os
import tomllib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from shoal.errors import ConfigError
from shoal.families import FAMILIES, close_families, infer_family
from shoal.observe.alert_config import AlertsConfig
from shoal.pricing import ModelPrice
from shoal.secrets import MASK, mask_url, register_secret, register_url_secrets
from shoal.types import Usage

__all__ = ["ChannelConfig", "Config", "ModelInfo", "validation_message"]

OFFLINE_MODEL = "smollm2-135m"
CONFIG_ENV = "SHOAL_CONFIG"


class ChannelConfig(BaseModel):
    """One way to reach a model: an endpoint, a key and the limits that bind there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    protocol: Literal["openai", "anthropic"]
    base_url: str
    api_key_env: str | None = None
    api_key: SecretStr | None = None
    provider: str = ""
    max_concurrency: int | None = Field(default=None, ge=1)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    weight: float = Field(default=1.0, gt=0)
    adaptive: bool | None = None  # None: adaptive when max_concurrency is not set
    # The most calls adaptive concurrency may learn to run at once on this channel (a
    # gateway carrying hundreds of streams raises it; None: the Router's default, 64).
    adaptive_max: int | None = Field(default=None, ge=1)
    shared: bool = False
    lease_s: float = Field(default=30.0, gt=0)  # shared limits: a dead holder frees within it
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=300.0, gt=0)
    write_timeout: float = Field(default=30.0, gt=0)
    pool_timeout: float = Field(default=30.0, gt=0)
    pool_size: int = Field(default=100, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)
    models: dict[str, str] = Field(default_factory=dict)
    # Prompt caching (shoal.providers.caching): None = auto; "off" sends nothing cached.
    cache: Literal["auto", "off"] | None = None
    cache_ttl: Literal["5m", "1h"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _infer_provider(cls, data: Any) -> Any:
        # No provider given: the family from base_url, else the name, else "generic".
        if isinstance(data, dict) and not data.get("provider"):
            base_url, name = data.get("base_url"), data.get("name")
            if isinstance(base_url, str) and isinstance(name, str):
                data = {**data, "provider": infer_family(base_url, name)}
        return data

    def model_post_init(self, context: Any, /) -> None:
        # Credentials in the URL or in extra headers (a proxy's token) are secrets shoal
        # holds: masked by value from here on, in this check's message too.
        register_url_secrets(self.base_url)
        for header, value in self.headers.items():
            if header.lower() not in _PLAIN_HEADERS:
                register_secret(value)
        _check_base_url(self.name, self.base_url)
        if self.provider not in FAMILIES:
            close = close_families(self.provider)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"[channels.{self.name}] provider {self.provider!r} is not a known provider "
                f"family.{hint} Known: {', '.join(FAMILIES)}. Leave provider out to infer it "
                "from base_url, or use \"generic\" for any other OpenAI- or "
                "Anthropic-compatible server"
            )
        if self.api_key is not None:
            register_secret(self.api_key.get_secret_value())

    def __repr_args__(self) -> Any:  # never a credential: masked URL, header values
        for name, value in super().__repr_args__():
            if name == "base_url":
                yield name, mask_url(value)
            elif name == "headers":
                yield name, {k: v if k.lower() in _PLAIN_HEADERS else MASK
                             for k, v in value.items()}
            else:
                yield name, value

    def key(self) -> str | None:
        """The API key: given directly, or read from the named environment variable.
        Either way the value is registered with :mod:`shoal.secrets`, so it is masked in
        every error, stored record and event."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            value = os.environ.get(self.api_key_env) or None
            register_secret(value)
            return value
        return None

    def has_key(self) -> bool:
        return self.key() is not None or self.api_key_env is None

    def wire_model(self, model: ModelInfo) -> str:
        """The model id this channel expects on the wire."""
        return self.models.get(model.name, model.wire_name or model.name)


class ModelInfo(BaseModel):
    """A catalog entry: capabilities, prices (USD per million tokens) and routing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    aliases: list[str] = Field(default_factory=list)
    provider: str = ""
    wire_name: str | None = None
    context_window: int = Field(default=128_000, ge=1)
    max_output: int = Field(default=8192, ge=1)
    input: float = Field(default=0.0, ge=0)
    output: float = Field(default=0.0, ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    # Cache writes: 5-minute (default 1.25× input on Claude models, else = input) and
    # 1-hour (default 2× input). See shoal.pricing.
    cache_write: float | None = Field(default=None, ge=0)
    cache_write_1h: float | None = Field(default=None, ge=0)
    encoding: Literal["approx", "cl100k_base", "o200k_base"] = "approx"
    reasoning: bool = False
    channels: list[str] = Field(default_factory=list)
    fallbacks: list[str] = Field(default_factory=list)
    # Prompt caching for this model on every channel; "off" here or on the channel wins.
    cache: Literal["auto", "off"] | None = None
    cache_ttl: Literal["5m", "1h"] | None = None
    # The day the provider retires it (ISO date, UTC): never picked as the default model;
    # callable by name until then (a warning once per process from 30 days before), then
    # refused before sending (ModelRetired, naming ``replaced_by``). See
    # shoal.traffic.retirement.
    retires: datetime.date | None = None
    replaced_by: str | None = None

    @functools.cached_property
    def price(self) -> ModelPrice:
        """This model's prices, with the defaults filled in (:meth:`ModelPrice.of`);
        computed once (the model is frozen; every answer is priced with it)."""
        claude = self.provider == "anthropic" or \
            (self.wire_name or self.name).lower().startswith("claude")
        return ModelPrice.of(self.input, self.output, cached_input=self.cached_input,
                             cache_write=self.cache_write, cache_write_1h=self.cache_write_1h,
                             anthropic=claude)

    def cost(self, usage: Usage | int, output_tokens: int = 0,
             cached_input_tokens: int = 0) -> float:
        """USD for ``usage``: each kind of token at its price (:mod:`shoal.pricing`).
        ``cost(input_tokens, output_tokens, cached_input_tokens)`` is the older form."""
        if not isinstance(usage, Usage):
            usage = Usage(usage, output_tokens, cached_input_tokens)
        return self.price.cost(usage)


# Extra headers that carry no credential (versions, feature flags, attribution): shown;
# any other header's value is a secret (registered, masked in reprs).
_PLAIN_HEADERS = frozenset({"anthropic-version", "anthropic-beta", "http-referer", "x-title",
                            "user-agent", "accept", "content-type", "openai-beta"})


def _check_base_url(channel: str, url: str) -> None:
    """ConfigError unless ``url`` is http(s)://host… or local://name, with no
    ``user:password@`` in it (the message masks the password)."""
    try:
        parts = urlsplit(url)
        ok = (parts.scheme in ("http", "https") and bool(parts.hostname)
              and parts.port != 0) or (parts.scheme == "local" and bool(parts.netloc))
    except ValueError:  # a port that is not a number
        ok = False
    if not ok:
        raise ConfigError(
            f"[channels.{channel}] base_url {url!r} is not an endpoint URL: use "
            "http(s)://host[:port]/path (e.g. \"https://api.deepseek.com/v1\"), or "
            "\"local://llama-cpp\" for the offline model"
        )
    if "@" in parts.netloc:
        # user:password@ would be sent as basic auth in place of the API key (and every
        # call refused before sending): a credential goes where shoal sends credentials.
        raise ConfigError(
            f"[channels.{channel}] base_url {mask_url(url)} carries credentials "
            "(user:password@): credentials don't belong in base_url. Give the API key as "
            "api_key (or api_key_env, the variable holding it), and any other credential "
            "(a proxy's token) as a header under headers; then write base_url without them"
        )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory: give the shoal.toml file "
                          "itself (--config/-c or $SHOAL_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
            f"offset {exc.start}): a shoal.toml is TOML, saved as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


@functools.cache
def _catalog_data() -> dict[str, Any]:
    """The shipped catalog, parsed once per process (callers copy what they change)."""
    text = resources.files("shoal.catalog").joinpath("models.toml").read_text("utf-8")
    return tomllib.loads(text)


def validation_message(where: str, exc: ValidationError,
                       fields: Iterable[str] = ()) -> str:
    """pydantic's errors as one line; an unknown field (a typo) names the close matches
    among ``fields`` (the table's known fields)."""
    known = [f for f in fields if f != "name"]
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1 and known:
            close = difflib.get_close_matches(str(err["loc"][0]), known, n=3, cutoff=0.6)
            msg = "unknown field" + (f"; did you mean: {', '.join(close)}?" if close else
                                     f"; known fields: {', '.join(known)}")
        problems.append(f"{loc}: {msg}")
    return f"invalid {where}: {'; '.join(problems)}"


def _alerts_section(raw: Any) -> AlertsConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("[alerts] must be a table (see docs/observe.md)")
    try:
        return AlertsConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_message("[alerts]", exc, AlertsConfig.model_fields)) from None


class Config:
    """Channels and models, resolved. Build with :meth:`load` or :meth:`from_dict`."""

    #: ``[alerts]`` (shoal.observe.alerts); None when shoal.toml has no such section
    alerts: AlertsConfig | None = None

    def __init__(
        self,
        channels: dict[str, ChannelConfig],
        models: dict[str, ModelInfo],
        *,
        redis_url: str | None = None,
        gateway: dict[str, Any] | None = None,
    ) -> None:
        self.channels = channels
        self.models = models
        self.redis_url = redis_url
        register_url_secrets(redis_url)
        self.gateway: dict[str, Any] = dict(gateway or {})  # [gateway]: shoal.gateway.settings
        self._aliases: dict[str, str] = {}
        for info in models.values():
            self._aliases[info.name.lower()] = info.name
            for alias in info.aliases:
                self._aliases[alias.lower()] = info.name
        for info in models.values():
            for ch in info.channels:
                if ch not in channels:
                    raise ConfigError(
                        f"model {info.name!r} names channel {ch!r}, which is not defined; "
                        f"defined channels: {', '.join(sorted(channels)) or '(none)'}"
                    )

    # -- construction -------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None) -> Config:
        """The catalog plus ``path`` (or ``$SHOAL_CONFIG``, or ``./shoal.toml`` if present)."""
        user: dict[str, Any] = {}
        if path is None:
            env_path = os.environ.get(CONFIG_ENV)
            if env_path:
                path = env_path
            elif Path("shoal.toml").is_file():
                path = "shoal.toml"
        if path is not None:
            user = _read_toml(Path(path))
        return cls.from_dict(user)

    @classmethod
    def from_dict(cls, user: dict[str, Any] | None = None) -> Config:
        """The catalog with ``user`` (the parsed shape of a shoal.toml) laid over it."""
        user = dict(user or {})
        alerts = _alerts_section(user.pop("alerts", None))
        top = ("channels", "models", "redis_url", "gateway", "alerts")
        unknown = set(user) - set(top)
        if unknown:
            close = {c for u in unknown for c in difflib.get_close_matches(u, top, n=1)}
            hint = f" Did you mean: {', '.join(sorted(close))}?" if close else ""
            raise ConfigError(
                f"unknown top-level config keys {sorted(unknown)}; expected [channels.*], "
                f"[models.*], [gateway], [alerts] and redis_url.{hint}"
            )
        catalog = _catalog_data()
        channels: dict[str, ChannelConfig] = {}
        for name, raw in catalog.get("providers", {}).items():
            channels[name] = ChannelConfig(name=name, provider=name, **raw)
        for name, raw in (user.get("channels") or {}).items():
            if not isinstance(raw, dict):
                raise ConfigError(f"[channels.{name}] must be a table")
            merged = dict(raw)
            base = channels.get(name)
            if base is not None:
                # A new base_url without a provider: infer the family again from it.
                drop = {"name"} | ({"provider"} if "base_url" in raw else set())
                merged = {**base.model_dump(exclude=drop), **raw}
            try:
                channels[name] = ChannelConfig(name=name, **merged)
            except ValidationError as exc:
                raise ConfigError(validation_message(
                    f"[channels.{name}]", exc, ChannelConfig.model_fields)) from None

        models: dict[str, ModelInfo] = {}
        for name, raw in catalog.get("models", {}).items():
            entry = dict(raw)
            entry.setdefault("channels", [entry.get("provider", "")])
            models[name] = ModelInfo(name=name, **entry)
        for name, raw in (user.get("models") or {}).items():
            if not isinstance(raw, dict):
                raise ConfigError(f"[models.{name!r}] must be a table")
            base_model = models.get(name)
            merged_m = {**base_model.model_dump(exclude={"name"}), **raw} if base_model else raw
            if not merged_m.get("channels"):
                provider = merged_m.get("provider")
                merged_m["channels"] = [provider] if provider else []
            try:
                models[name] = ModelInfo(name=name, **merged_m)
            except ValidationError as exc:
                raise ConfigError(validation_message(
                    f"[models.{name!r}]", exc, ModelInfo.model_fields)) from None
            if not models[name].channels:
                raise ConfigError(
                    f"model {name!r} has no channels: set channels = [...] or provider = ..."
                )
        gateway = user.get("gateway")
        if gateway is not None and not isinstance(gateway, dict):
            raise ConfigError("[gateway] must be a table (see docs/gateway.md)")
        config = cls(channels, models, redis_url=user.get("redis_url"), gateway=gateway)
        config.alerts = alerts
        for info in models.values():
            for fallback in info.fallbacks:  # a typo here would surface only in an outage
                if fallback.lower() not in config._aliases:
                    near = difflib.get_close_matches(fallback.lower(), list(config._aliases),
                                                     n=3, cutoff=0.5)
                    names = dict.fromkeys(config._aliases[c] for c in near)
                    hint = f" Did you mean: {', '.join(names)}?" if near else ""
                    raise ConfigError(
                        f"[models.{info.name!r}] fallbacks names {fallback!r}, which is no "
                        f"model of the catalog or shoal.toml.{hint} Name one `shoal models` "
                        "lists, or add it under [models]")
            if info.replaced_by is not None and info.replaced_by.lower() not in config._aliases:
                raise ConfigError(
                    f"[models.{info.name!r}] replaced_by = {info.replaced_by!r} names no "
                    "model of the catalog or shoal.toml; name one `shoal models` lists")
        return config

    # -- lookups ------------------------------------------------------------------------

    def model(self, name: str) -> ModelInfo:
        """The catalog entry for a name or alias; ``ConfigError`` with close matches if unknown."""
        canonical = self._aliases.get(name.lower())
        if canonical is None:
            close = difflib.get_close_matches(name.lower(), list(self._aliases), n=4, cutoff=0.5)
            names = dict.fromkeys(self._aliases[c] for c in close)  # aliases: one name each
            hint = f" Did you mean: {', '.join(names)}?" if close else ""
            raise ConfigError(
                f"unknown model {name!r}.{hint} Add it under [models.{name!r}] in shoal.toml "
                "(see docs/config.md)."
            )
        return self.models[canonical]

    def channels_for(self, model: str | ModelInfo) -> list[ChannelConfig]:
        info = model if isinstance(model, ModelInfo) else self.model(model)
        return [self.channels[c] for c in info.channels]

    def add_channel(self, channel: ChannelConfig) -> None:
        self.channels[channel.name] = channel

    def add_model(self, info: ModelInfo) -> None:
        for ch in info.channels:
            if ch not in self.channels:
                raise ConfigError(f"model {info.name!r} names undefined channel {ch!r}")
        self.models[info.name] = info
        self._aliases[info.name.lower()] = info.name
        for alias in info.aliases:
            self._aliases[alias.lower()] = info.name

    def usable(self, model: str | ModelInfo) -> bool:
        """True when at least one channel of the model has its API key available."""
        return any(ch.has_key() for ch in self.channels_for(model))

    def default_model(self) -> str:
        """The offline model unless some provider key is set (then the cheapest usable model)."""
        usable = [
            m for m in self.models.values()
            if m.name != OFFLINE_MODEL and m.retires is None and self.usable(m)
        ]
        if not usable:
            return OFFLINE_MODEL
        return min(usable, key=lambda m: (m.input + m.output, m.name)).name
