"""The production Celery app with faults injected from outside its code, chosen by environment:

- FAULT_CRASH_ON_FILENAME: the pool process exits (as if killed) when it meets an upload so named.
- FAULT_RAISE_ON_FILENAME: a chunk holding an upload so named raises an unexpected error.
- FAULT_SLOW_ITEM_S: every upload takes this much longer to prepare (long-running tasks).

Start it as `celery -A tests.integration.fault_worker worker`. The patches are made at import,
in the parent, so every pool process inherits them.
"""

from __future__ import annotations

import logging
import os
import time

from worker.app import app  # noqa: F401 - what `celery -A` loads
from worker.ingest import indexing

log = logging.getLogger(__name__)

CRASH_ON = os.environ.get("FAULT_CRASH_ON_FILENAME")
RAISE_ON = os.environ.get("FAULT_RAISE_ON_FILENAME")
SLOW_S = float(os.environ.get("FAULT_SLOW_ITEM_S", "0"))

_prepare_item = indexing.prepare_item
_process = indexing._process


def prepare_item(ctx, index, inp, data):
    if CRASH_ON and inp.filename == CRASH_ON:
        log.warning("injected fault: exiting on %s", inp.filename)
        os._exit(70)
    if SLOW_S:
        time.sleep(SLOW_S)
    return _prepare_item(ctx, index, inp, data)


def process(ctx, indices):
    names = [getattr(i, "filename", None) for i in ctx.jobs.inputs(ctx.job_id, indices)]
    if RAISE_ON and RAISE_ON in names:
        raise RuntimeError(f"injected fault on {RAISE_ON}")
    return _process(ctx, indices)


indexing.prepare_item = prepare_item
indexing._process = process
