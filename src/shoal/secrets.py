"""Secrets: a process-wide registry of API-key values, and redaction by value and by shape.

shoal knows every key it sends: a channel's key is registered the moment it is read
(:meth:`shoal.config.ChannelConfig.key`), and users register their own secrets with
:func:`register_secret`. :func:`redact` replaces every registered value wherever it
appears, whatever its shape (a Gemini ``AIza…`` key, a Zhipu ``id.secret`` key, a
proxy's token), then applies shape rules as a second net for keys shoal never saw
(``sk-…``, ``AIza…``, ``Bearer …``, ``x-api-key: …``, ``api_key=…``, ``?key=…`` URL
parameters, Zhipu ``id.secret``, JWTs).

Redaction runs on error messages and bodies (every :class:`~shoal.errors.ShoalError`),
on what the run stores write (values only for results, values and shapes for error
texts), on tool errors sent back to a model, and on event fields.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterable, Sequence

__all__ = [
    "MASK",
    "MIN_SECRET_CHARS",
    "forget_secret",
    "key_rejected_hint",
    "mask_url",
    "redact",
    "redact_values",
    "register_secret",
    "register_url_secrets",
    "registry_version",
    "url_secrets",
]

MASK = "***"
# Shorter values are not registered: masking every "test" or "abc" in every message would
# destroy text, and a key that short is not a secret worth the name.
MIN_SECRET_CHARS = 8


class _Registry:
    """The registered values and one compiled pattern matching any of their forms.
    Replaced whole under a lock; readers take one consistent snapshot without it."""

    __slots__ = ("lock", "pattern", "values")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: frozenset[str] = frozenset()
        self.pattern: re.Pattern[str] | None = None

    def rebuild(self, values: frozenset[str]) -> None:
        forms = {form for v in values for form in _forms(v)}
        # Longest first, so a key that contains another is masked whole.
        self.pattern = (
            re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))
            if forms else None
        )
        self.values = values


_registry = _Registry()

# The second net: shapes of keys and tokens seen in the wild, for values shoal never read.
# Each rule: a substring the text must hold (checked in lower case) before its regex runs
# (most messages hold none, so they cost a few substring tests), and the regex, whose
# group 1, when present, is a label kept while the value is masked. Compiled on first
# use: ``import shoal.errors`` stays light.
# A gateway virtual key's display prefix ("sk-shoal-" and at most 6 characters, then
# "…") names a key without being one: shown, as OpenAI shows "sk-…abcd".
_SHOWN_KEY = r"(?!sk-shoal-[A-Za-z0-9_\-]{0,6}…)"
_SHAPE_RULES = (
    ("bearer", r"(?i)(\bbearer\s+)" + _SHOWN_KEY + r"[A-Za-z0-9._~+/\-]{8,}=*"),
    ("sk-", r"\b" + _SHOWN_KEY + r"sk-[A-Za-z0-9_\-]{6,}"),
    ("aiza", r"\bAIza[0-9A-Za-z_\-]{20,}"),
    ("api", r"(?i)((?:x-(?:goog-)?)?api[_-]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]{8,}"),
    ("=", r"(?i)([?&](?:key|api[_-]?key|apikey|access[_-]?token|token|secret)=)[^&\s\"'#]{4,}"),
    (".", r"\b[0-9a-fA-F]{24,}\.[0-9A-Za-z]{10,}\b"),  # Zhipu: a 32-hex id, a dot, a secret
    ("eyj", r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),  # JWT
)


@functools.cache
def _shapes() -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple((needle, re.compile(source)) for needle, source in _SHAPE_RULES)


def _forms(value: str) -> set[str]:
    """The value as it may appear in text: raw, JSON-escaped and URL-encoded."""
    import json  # here, not at import: ``import shoal.errors`` stays light
    from urllib.parse import quote

    return {value, json.dumps(value)[1:-1], quote(value, safe="")}


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every error, stored record, tool error and event from now on.

    Channel keys are registered by shoal when read; call this for any other secret
    (a tool's own API token, a database password). Values shorter than
    :data:`MIN_SECRET_CHARS` are ignored."""
    if not value or len(value) < MIN_SECRET_CHARS or value in _registry.values:
        return
    with _registry.lock:
        _registry.rebuild(_registry.values | {value})


# Query parameters that carry a credential in the URLs shoal holds (store, Redis, a
# channel's base_url): libpq, asyncpg and redis-py all take ``password=``.
_URL_SECRET_PARAMS = frozenset({"password", "pass", "pwd", "key", "api_key", "apikey",
                                "access_token", "token", "secret", "sig", "signature"})


def _userinfo(url: str) -> tuple[int, int] | None:
    """Where ``user:password`` stands in ``url`` (after ``://``, up to the last ``@``, so
    an unencoded ``#``, ``/`` or ``?`` in the password stays in it), or None without a
    password."""
    start = url.find("://")
    at = url.rfind("@")
    if start < 0 or at <= start or ":" not in url[start + 3:at]:
        return None
    return start + 3, at


def url_secrets(url: str) -> list[str]:
    """The credentials in ``url``, read from the raw text, not a URL parser: the
    password of its user part (up to the last ``@``, so a password holding an unencoded
    ``#``, ``/`` or ``?`` is found whole, where a parser would split it) and the values
    of credential query parameters, each as written and percent-decoded."""
    from urllib.parse import parse_qsl, unquote

    found: list[str] = []
    userinfo = _userinfo(url)
    if userinfo is not None:
        password = url[userinfo[0]:userinfo[1]].split(":", 1)[1]
        if password:
            found.append(password)
        # A parser meets an unencoded #, / or ? as the URL's next part and may quote
        # what came before it in its error ("invalid port 'Tr0mbone'"): that too.
        cut = re.split(r"[#/?]", password, maxsplit=1)[0]
        if cut != password:
            found.append(cut)
    query = url.split("?", 1)[1] if "?" in url else ""
    for name, value in parse_qsl(query.split("#", 1)[0], keep_blank_values=False):
        if name.lower() in _URL_SECRET_PARAMS:
            found.append(value)
    return [form for value in found for form in dict.fromkeys((value, unquote(value)))
            if form]


def mask_url(url: str) -> str:
    """``url`` with the credentials :func:`url_secrets` finds replaced, in place, by
    :data:`MASK` (for display: ``postgresql://u:***@host/db``)."""
    userinfo = _userinfo(url)
    if userinfo is not None:
        begin, end = userinfo
        user = url[begin:end].split(":", 1)[0]
        url = f"{url[:begin]}{user}:{MASK}{url[end:]}"
    if "?" in url:
        names = "|".join(sorted(_URL_SECRET_PARAMS))
        url = re.sub(rf"(?i)([?&](?:{names})=)[^&#]*", rf"\g<1>{MASK}", url)
    return url


def register_url_secrets(url: str | None) -> None:
    """:func:`register_secret` every credential in ``url`` (:func:`url_secrets`): from
    then on it is masked by value wherever it appears, also in a parser's error that
    quotes part of the URL."""
    if url:
        for value in url_secrets(url):
            register_secret(value)


def forget_secret(value: str) -> None:
    """Stop masking ``value`` (a rotated key); the shape rules still apply."""
    if value in _registry.values:
        with _registry.lock:
            _registry.rebuild(_registry.values - {value})


def registry_version() -> object:
    """A value that changes (by identity) whenever a secret is registered or forgotten:
    a cache of redacted texts keyed on it is never stale."""
    return _registry.values


def redact_values(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every registered secret (and each of ``secrets``) masked; no shape
    rules, so user data (step results, run inputs) is never rewritten by a guess."""
    pattern = _registry.pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    return text


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with API keys removed: registered values and ``secrets`` verbatim, then
    anything shaped like a key. For messages, error bodies, URLs and error texts."""
    text = redact_values(text, secrets)
    lower = text.lower()
    for needle, shape in _shapes():
        if needle in lower:
            text = shape.sub(_mask_match, text)
    return text


def _mask_match(match: re.Match[str]) -> str:
    return (match.group(1) or "" if match.re.groups else "") + MASK


def key_rejected_hint(channel: str, api_key_env: str | None, status: int = 401) -> str:
    """Why a channel is down after its key was rejected, and how to fix it (no key in it).

    For the message of an :class:`~shoal.errors.AuthError` and of the "no healthy
    channel" error that follows it."""
    if api_key_env:
        where = f"the API key in ${api_key_env}"
        fix = f"set a valid key in {api_key_env} (and check its permissions)"
    else:
        where = "its API key (given as api_key in the config)"
        fix = "fix api_key in the channel's config, or use api_key_env"
    return f"channel {channel!r} is down: {where} was rejected (HTTP {status}); {fix}"
