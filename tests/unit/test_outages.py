"""Waiting out a Redis outage in place (worker/upkeep/outages.py), without services."""

from __future__ import annotations

import time

import pytest
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from worker.upkeep.outages import through_outages, wait_for_redis


class FlakyRedis:
    """Answers PING only after `down_for` failed tries."""

    def __init__(self, down_for: int) -> None:
        self.down_for = down_for
        self.pings = 0

    def ping(self) -> bool:
        self.pings += 1
        if self.pings <= self.down_for:
            raise RedisConnectionError("Error 111 connecting")
        return True


def test_a_step_runs_again_once_redis_answers() -> None:
    client = FlakyRedis(down_for=2)
    calls: list[int] = []

    def step() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1")
        if len(calls) == 2:
            raise OperationalError("the broker is down too")  # publishing a task: the same Redis
        return "done"

    assert through_outages(client, step, wait_s=10, what="a test") == "done"  # type: ignore[arg-type]
    assert len(calls) == 3 and client.pings >= 3


def test_an_outage_longer_than_the_wait_propagates() -> None:
    client = FlakyRedis(down_for=10**6)

    def step() -> None:
        raise RedisConnectionError("down")

    started = time.monotonic()
    with pytest.raises(RedisConnectionError):
        through_outages(client, step, wait_s=0.6, what="a test")  # type: ignore[arg-type]
    assert time.monotonic() - started < 3


def test_other_errors_are_not_outages() -> None:
    def step() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        through_outages(FlakyRedis(0), step, wait_s=10, what="a test")  # type: ignore[arg-type]


def test_wait_for_redis_gives_up_at_the_deadline() -> None:
    assert not wait_for_redis(FlakyRedis(10**6), time.monotonic() + 0.3)  # type: ignore[arg-type]
    assert wait_for_redis(FlakyRedis(1), time.monotonic() + 5)  # type: ignore[arg-type]
