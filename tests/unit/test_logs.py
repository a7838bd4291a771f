import json
import logging

from shared.logs import JsonFormatter, current_job


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "t", "levelname": "INFO", "msg": msg, "args": ()})
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_the_job_id_and_extras() -> None:
    token = current_job.set("job-123")
    try:
        line = json.loads(JsonFormatter().format(_record("indexed %s", collection="pets")))
    finally:
        current_job.reset(token)
    assert line["message"] == "indexed %s" and line["job_id"] == "job-123" and line["collection"] == "pets"
    assert line["level"] == "INFO" and line["ts"].endswith("+00:00")
    assert "job_id" not in json.loads(JsonFormatter().format(_record("idle")))


def test_exceptions_are_included() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = _record("failed")
        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonFormatter().format(record))["exception"]
