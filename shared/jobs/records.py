"""The job record: how it is laid out in Redis and read back. Pure functions, no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from shared.schemas import (
    CallbackState,
    CallbackStatus,
    ItemError,
    ItemOutcome,
    ItemStatus,
    JobStatus,
    JobType,
    JobView,
    Progress,
    utcnow,
)


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def new_job_fields(
    job_type: JobType, collection: str, total: int, params: Mapping[str, Any], seq: int = 0
) -> dict[str, str]:
    """`seq` orders the job against deletes (a delete wins over an add queued before it)."""
    return {
        "type": job_type.value,
        "status": JobStatus.queued.value,
        "collection": collection,
        "total": str(total),
        "done": "0",
        "failed": "0",
        "created_at": utcnow(),
        "params": json.dumps(dict(params)),
        "seq": str(seq),
    }


def parse_job(job_id: str, raw: Mapping[bytes | str, bytes | str], raw_errors: list[bytes | str]) -> JobView:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    result = fields.get("result")
    return JobView(
        job_id=job_id,
        type=JobType(fields["type"]),
        status=JobStatus(fields["status"]),
        collection=fields["collection"],
        progress=Progress(
            total=int(fields.get("total") or 0),
            done=int(fields.get("done") or 0),
            failed=int(fields.get("failed") or 0),
        ),
        result=json.loads(result) if result else None,
        errors=[ItemError.model_validate_json(e) for e in raw_errors],
        created_at=fields["created_at"],
        started_at=fields.get("started_at"),
        finished_at=fields.get("finished_at"),
        callback=_callback(fields),
    )


def parse_announcement(job_id: str, message: bytes | str) -> JobView | None:
    """The final job a "done" message carries (FINISH_JOB), or None when it carries only the status
    (a large record, or item errors): then the record must be read."""
    text_ = _text(message) or ""
    if not text_.startswith("{"):
        return None
    announced = json.loads(text_)
    flat = announced["job"]
    return parse_job(job_id, dict(zip(flat[::2], flat[1::2], strict=True)), [])


def _callback(fields: Mapping[str | None, str | None]) -> CallbackState | None:
    url = fields.get("callback_url")
    if not url:
        return None
    return CallbackState(
        url=url,
        status=CallbackStatus(fields.get("callback_status") or CallbackStatus.waiting),
        attempts=int(fields.get("callback_attempts") or 0),
        last_error=fields.get("callback_error"),
        delivered_at=fields.get("callback_at"),
    )


def job_params(raw: Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    return json.loads(fields.get("params") or "{}")


def job_seq(raw: Mapping[bytes | str, bytes | str]) -> int:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    return int(fields.get("seq") or 0)


def final_status(total: int, failed: int) -> JobStatus:
    if failed == 0:
        return JobStatus.succeeded
    return JobStatus.failed if failed >= total else JobStatus.partial


def index_result(raw_items: Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
    """What an index job reports: ids created, ids that were already there, ids a later delete
    overruled, in upload order."""
    outcomes = sorted((ItemOutcome.model_validate_json(v) for v in raw_items.values()), key=lambda o: o.index)
    return {
        "created": [o.image_id for o in outcomes if o.status == ItemStatus.created],
        "existing": [o.image_id for o in outcomes if o.status == ItemStatus.existing],
        "deleted": [o.image_id for o in outcomes if o.status == ItemStatus.deleted],
        "items": [o.model_dump(mode="json") for o in outcomes],
    }
