"""Splitting unshared channel limits over gateway workers (shoal.gateway.worker_limits)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.config import Config
from shoal.errors import ConfigError
from shoal.gateway.worker_limits import share, split_channels, split_notice, workers_need_redis


def _config(**channel: object) -> Config:
    return Config.from_dict({
        "redis_url": "redis://127.0.0.1:6379/0",
        "channels": {"a": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1",
                           "api_key": "sk-x", **channel},
                     "free": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1",
                              "api_key": "sk-x"}},
        "models": {"m": {"channels": ["a", "free"]}},
    })


@given(st.integers(1, 10_000), st.integers(1, 64))
def test_the_shares_add_up_to_the_limit(limit: int, workers: int) -> None:
    parts = [share(limit, i, workers) for i in range(workers)]
    assert sum(parts) == limit
    assert max(parts) - min(parts) <= 1


def test_each_worker_gets_its_share_of_every_limit() -> None:
    split = [split_channels(_config(max_concurrency=5, rpm=100, tpm=9_001), i, 2)
             for i in range(2)]
    got = [(c.channels["a"].max_concurrency, c.channels["a"].rpm, c.channels["a"].tpm)
           for c in split]
    assert got == [(3, 50, 4_501), (2, 50, 4_500)]
    assert all(c.channels["free"].max_concurrency is None for c in split)  # adaptive: as is


def test_shared_channels_and_one_worker_are_left_alone() -> None:
    shared = split_channels(_config(max_concurrency=5, shared=True), 1, 4)
    assert shared.channels["a"].max_concurrency == 5
    assert split_notice(_config(max_concurrency=5, shared=True), 4) is None
    assert split_channels(_config(max_concurrency=5), 0, 1).channels["a"].max_concurrency == 5
    assert split_notice(_config(max_concurrency=5), 1) is None


def test_the_notice_names_each_split() -> None:
    notice = split_notice(_config(max_concurrency=5, rpm=60), 2)
    assert notice is not None
    assert "a (max_concurrency 5 → 3+2, rpm 60 → 30+30)" in notice
    # redis_url is set: only shared = true is missing (it used to say set redis_url too)
    assert notice.endswith("set shared = true on these channels (redis_url is set)")


def test_a_limit_below_the_worker_count_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"too small to split: a\.rpm = 3"):
        split_channels(_config(rpm=3), 0, 4)
    with pytest.raises(ConfigError, match="or run fewer workers"):
        split_notice(_config(max_concurrency=1), 2)


def test_several_workers_need_redis_keys_or_none() -> None:
    workers_need_redis(1, None)  # one worker: its limits are the limits
    workers_need_redis(4, "redis://127.0.0.1:6379/0")  # shared
    # No keys yet is no exception: a key created while the gateway runs would be
    # enforced by each worker on its own.
    with pytest.raises(ConfigError, match="4× the limit"):
        workers_need_redis(4, None)
