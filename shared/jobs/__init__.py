"""The job lifecycle's one home: create → run → record items → finish → read → wait.

`records` lays a job out in Redis and reads it back (pure); `scripts` holds the Lua that moves a
job between states (statuses come in as arguments); `lifecycle` describes every operation as a
sequence of Redis command batches without doing I/O; `runner` executes those on a synchronous
(worker) or asynchronous (API) client. Both services use the same operations.
"""

from shared.jobs.clients import AsyncJobs, Jobs
from shared.jobs.lifecycle import JobLifecycle
from shared.jobs.records import final_status, index_result, job_params, new_job_fields, parse_job

__all__ = [
    "AsyncJobs",
    "JobLifecycle",
    "Jobs",
    "final_status",
    "index_result",
    "job_params",
    "new_job_fields",
    "parse_job",
]
