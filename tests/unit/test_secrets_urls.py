"""Credentials shoal holds in URLs and headers are masked by value: a store's or Redis's
password (in the user part, unencoded ``#``/``/``/``?`` included, or as ``password=``),
a channel base_url's credentials, and a channel's extra header values (a proxy token).
The values here do not look like keys, so only masking by value can hide them."""

from __future__ import annotations

import pytest

from shoal.config import Config
from shoal.errors import ConfigError, ShoalError
from shoal.secrets import mask_url, redact, url_secrets
from shoal.stores import open_store, shown_url, store_option


@pytest.mark.parametrize(("url", "secrets", "shown"), [
    ("postgresql://postgres:Tr0mbone!Velvet@127.0.0.1:5432/test?schema=a",
     ["Tr0mbone!Velvet"], "postgresql://postgres:***@127.0.0.1:5432/test?schema=a"),
    ("postgresql://u@127.0.0.1:1/x?password=Tr0mboneVelvet", ["Tr0mboneVelvet"],
     "postgresql://u@127.0.0.1:1/x?password=***"),
    ("postgresql://127.0.0.1/test?user=u&password=Tr0m%23bone", ["Tr0m#bone"],
     "postgresql://127.0.0.1/test?user=u&password=***"),
    ("redis://:Sax0phone#Amber@127.0.0.1:6379/0", ["Sax0phone#Amber", "Sax0phone"],
     "redis://:***@127.0.0.1:6379/0"),
    ("http://proxyuser:lantern-9931@h:8/v1?key=quartz-4410&mode=x",
     ["lantern-9931", "quartz-4410"], "http://proxyuser:***@h:8/v1?key=***&mode=x"),
    ("sqlite:///.shoal/runs.db", [], "sqlite:///.shoal/runs.db"),
])
def test_url_credentials_are_found_and_masked(url: str, secrets: list[str], shown: str
                                             ) -> None:
    assert url_secrets(url) == secrets
    assert mask_url(url) == shown == shown_url(url)


def test_opening_a_store_registers_its_password_by_value() -> None:
    open_store("postgresql://u@127.0.0.1:1/x?password=Oboe-Marigold-55")
    open_store("redis://:Tuba#Saffron-77@127.0.0.1:1/0")
    said = "connect failed: password=Oboe-Marigold-55, port 'Tuba' of Tuba#Saffron-77"
    assert "Oboe-Marigold" not in redact(said) and "Saffron" not in redact(said)
    assert "Oboe" not in store_option("postgresql://u@127.0.0.1:1/x?password=Oboe-Marigold-55")


def test_a_channels_header_values_and_url_credentials_are_secrets() -> None:
    # a base_url's user:password@ is refused at load (config.py); its ?key= is a secret
    cfg = Config.from_dict({
        "channels": {"proxy": {"protocol": "openai", "api_key": "sk-test-000000000",
                               "base_url": "http://127.0.0.1:9/v1?key=heron-Granite-3318",
                               "headers": {"X-Proxy-Auth": "granite-heron-3318-vapor",
                                           "anthropic-version": "2023-06-01"}}},
        "models": {"m": {"channels": ["proxy"]}},
        "redis_url": "redis://:Cello-Umber-4521@127.0.0.1:6379/0",
    })
    shown = repr(cfg.channels["proxy"])
    assert "granite-heron" not in shown and "heron-Granite" not in shown
    assert "2023-06-01" in shown  # a version header is no secret
    for value in ("granite-heron-3318-vapor", "heron-Granite-3318", "Cello-Umber-4521"):
        assert value not in redact(f"upstream said: headers={{'X-Proxy-Auth': '{value}'}}")
        assert value not in str(ShoalError(f"echoed {value}"))


def test_a_bad_base_url_is_refused_without_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"channels": {"bad": {
            "protocol": "openai", "api_key": "sk-test-000000000",
            "base_url": "ftp://u:Walnut-Indigo-8812@h/v1"}}, "models": {}})
    assert "Walnut-Indigo" not in str(info.value) and "not an endpoint URL" in str(info.value)
