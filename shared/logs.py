"""Structured logging: one JSON object per line, with the job id of the work being done."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

# Set by the worker around each task, so every line it logs names its job.
current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_job", default=None)
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (job := current_job.get()) is not None:
            entry["job_id"] = job
        # Fields passed with `extra={...}` become keys of their own.
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class RepeatedFailure:
    """For a loop that must outlive its errors: the first failure of a run of failures is logged
    with its traceback, the same failure again at most once per `every_s` (with how many were
    quiet), and the recovery once. A persistent error is visible, not a line every half second."""

    def __init__(self, logger: logging.Logger, what: str, every_s: float = 60.0) -> None:
        self.logger, self.what, self.every_s = logger, what, every_s
        self.failing = False
        self.quiet = 0
        self._last = 0.0
        self._last_text = ""

    def failed(self, exc: BaseException) -> None:
        import time

        now, text = time.monotonic(), f"{type(exc).__name__}: {exc}"
        if not self.failing or text != self._last_text:
            self.logger.warning("%s failed: %s", self.what, text, exc_info=exc)
        elif now - self._last >= self.every_s:
            self.logger.warning("%s still failing (%d more since): %s", self.what, self.quiet, text)
        else:
            self.quiet += 1
            return
        self.failing, self.quiet, self._last, self._last_text = True, 0, now, text

    def succeeded(self) -> None:
        if self.failing:
            self.logger.info("%s works again", self.what)
        self.failing, self.quiet = False, 0
