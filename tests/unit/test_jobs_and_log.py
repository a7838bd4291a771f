import json

from shared.jobs import final_status, index_result, new_job_fields, parse_job
from shared.schemas import ItemError, ItemOutcome, ItemStatus, JobStatus, JobType
from worker.search.replica import fold_log, stream_id_key


def test_job_record_round_trip() -> None:
    fields = new_job_fields(JobType.index, "pets", 3, {"collection": "pets"})
    raw = {k.encode(): v.encode() for k, v in fields.items()}
    raw[b"done"] = b"2"
    raw[b"failed"] = b"1"
    raw[b"status"] = b"running"
    errors = [ItemError(index=1, filename="x.jpg", error="invalid_image", detail="nope").model_dump_json().encode()]
    view = parse_job("j1", raw, errors)
    assert view.type == JobType.index and view.status == JobStatus.running
    assert (view.progress.total, view.progress.done, view.progress.failed) == (3, 2, 1)
    assert view.errors[0].filename == "x.jpg" and view.result is None and view.finished_at is None


def test_final_status() -> None:
    assert final_status(10, 0) == JobStatus.succeeded
    assert final_status(10, 3) == JobStatus.partial
    assert final_status(10, 10) == JobStatus.failed
    assert JobStatus.partial.final and not JobStatus.running.final


def test_index_result_lists_ids_in_upload_order() -> None:
    outcomes = [
        ItemOutcome(index=2, filename="c", image_id="id-c", status=ItemStatus.existing),
        ItemOutcome(index=0, filename="a", image_id="id-a", status=ItemStatus.created),
        ItemOutcome(index=1, filename="b", image_id="id-b", status=ItemStatus.failed),
        ItemOutcome(index=3, filename="d", image_id="id-d", status=ItemStatus.created),
    ]
    raw = {str(o.index).encode(): o.model_dump_json().encode() for o in outcomes}
    result = index_result(raw)
    assert result["created"] == ["id-a", "id-d"]
    assert result["existing"] == ["id-c"]
    assert [i["index"] for i in result["items"]] == [0, 1, 2, 3]
    json.dumps(result)


def test_fold_log_keeps_the_last_operation_per_id() -> None:
    entries = [
        (b"1-0", {b"op": b"add", b"id": b"a"}),
        (b"1-1", {b"op": b"add", b"id": b"b"}),
        (b"2-0", {b"op": b"del", b"id": b"a"}),
        (b"3-0", {b"op": b"add", b"id": b"c"}),
        (b"4-0", {b"op": b"del", b"id": b"c"}),
        (b"5-0", {b"op": b"add", b"id": b"c"}),
    ]
    final, last = fold_log(entries)
    assert final == {"a": "del", "b": "add", "c": "add"}
    assert last == "5-0"
    assert fold_log([]) == ({}, None)


def test_stream_ids_compare_numerically() -> None:
    assert stream_id_key("10-0") > stream_id_key("9-5")
    assert stream_id_key("9-10") > stream_id_key("9-9")
