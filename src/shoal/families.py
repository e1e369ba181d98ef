"""Provider families: the one list of names a channel's ``provider`` may take.

A family says which provider's rules shape the wire format (quirks, structured-output
mode, reasoning round-trips). A channel names one explicitly, or shoal infers it:
from the base URL when the host is unambiguous, else from the channel's name when it
is a family, else ``"generic"`` (plain OpenAI-compatible / Anthropic-compatible).
"""

from __future__ import annotations

import difflib
from urllib.parse import urlsplit

__all__ = ["FAMILIES", "GENERIC", "close_families", "family_from_url", "infer_family"]

GENERIC = "generic"

# Every family shoal knows. Provider profiles and quirks are keyed by these names.
FAMILIES: tuple[str, ...] = (
    "openai",
    "anthropic",
    "deepseek",
    "moonshot",
    "zhipu",
    "minimax",
    "gemini",
    "qwen",
    "openrouter",
    "ollama",
    "vllm",
    "llamacpp",
    "offline",
    GENERIC,
)

# Host suffix -> family. A host matches when it equals the suffix or ends with "." + it.
_HOSTS: tuple[tuple[str, str], ...] = (
    ("api.deepseek.com", "deepseek"),
    ("api.anthropic.com", "anthropic"),
    ("api.openai.com", "openai"),
    ("api.moonshot.ai", "moonshot"),
    ("api.moonshot.cn", "moonshot"),
    ("open.bigmodel.cn", "zhipu"),
    ("api.z.ai", "zhipu"),
    ("api.minimax.io", "minimax"),
    ("api.minimaxi.com", "minimax"),
    ("api.minimax.chat", "minimax"),
    ("generativelanguage.googleapis.com", "gemini"),
    ("dashscope.aliyuncs.com", "qwen"),
    ("dashscope-intl.aliyuncs.com", "qwen"),
    ("openrouter.ai", "openrouter"),
)


def family_from_url(base_url: str) -> str | None:
    """The family a base URL unambiguously belongs to, or None (localhost, proxies,
    aggregators shoal does not know: the URL alone does not say)."""
    if base_url.startswith("local://"):
        return "offline"
    host = (urlsplit(base_url).hostname or "").lower()
    for suffix, family in _HOSTS:
        if host == suffix or host.endswith("." + suffix):
            return family
    if "dashscope" in host:
        return "qwen"
    return None


def infer_family(base_url: str, name: str) -> str:
    """The family of a channel that did not name one: from its URL, else its name, else
    ``"generic"``. A local URL (127.0.0.1, localhost: a simulator, vLLM, Ollama) says
    nothing, so a channel named ``zhipu`` pointed at a local simulator stays ``zhipu``."""
    by_url = family_from_url(base_url)
    if by_url is not None:
        return by_url
    if name in FAMILIES:
        return name
    return GENERIC


def close_families(name: str) -> list[str]:
    """Known families close to a misspelt ``name`` (for "did you mean")."""
    return difflib.get_close_matches(name.lower(), FAMILIES, n=3, cutoff=0.5)
