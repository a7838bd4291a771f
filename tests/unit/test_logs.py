"""A daemon loop's persistent error is visible once with its traceback, then rate-limited."""

from __future__ import annotations

import logging

import pytest

from shared.logs import RepeatedFailure


def test_a_persistent_error_logs_its_traceback_once_then_every_minute(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.loop")
    failures = RepeatedFailure(log, "webhook dispatch", every_s=3600)
    with caplog.at_level(logging.INFO, logger="test.loop"):
        for _ in range(100):  # a loop every 0.5 s for 50 s against a Redis that is down
            failures.failed(ConnectionError("Error 111 connecting to 127.0.0.1:6379"))
        failures.succeeded()
        failures.succeeded()
        failures.failed(ValueError("a bug"))
    records = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert records == [
        ("WARNING", "webhook dispatch failed: ConnectionError: Error 111 connecting to 127.0.0.1:6379", True),
        ("INFO", "webhook dispatch works again", False),
        ("WARNING", "webhook dispatch failed: ValueError: a bug", True),
    ]


def test_the_same_error_is_repeated_at_most_every_period(caplog: pytest.LogCaptureFixture) -> None:
    failures = RepeatedFailure(logging.getLogger("test.loop2"), "upload sweep", every_s=0)
    with caplog.at_level(logging.WARNING, logger="test.loop2"):
        failures.failed(OSError("disk"))
        failures.failed(OSError("disk"))
    assert [r.getMessage() for r in caplog.records] == [
        "upload sweep failed: OSError: disk",
        "upload sweep still failing (0 more since): OSError: disk",
    ]
