"""The API's paths, named once: the routers take their prefixes from here, and the middlewares that
run before routing (body caps in api/limits.py, the gate, the job-poll fast path) match a request's
path against the same names, as patterns."""

from __future__ import annotations

import re

V1 = "/v1"
COLLECTIONS = f"{V1}/collections"
COLLECTION = f"{COLLECTIONS}/{{collection}}"
IMAGES = f"{COLLECTION}/images"
LOOKUP = "/lookup"  # under IMAGES
IMPORTS = f"{COLLECTION}/imports"
SEARCH = f"{COLLECTION}/search"
SEARCH_BATCH = f"{SEARCH}/batch"
CLUSTERS = f"{COLLECTION}/clusters"
DUPLICATES = f"{COLLECTION}/duplicates"
JOBS = f"{V1}/jobs"
JOB = f"{JOBS}/{{job_id}}"
METRICS = "/metrics"
HEALTHZ = "/healthz"
READYZ = "/readyz"

# Liveness/readiness probes: never limited, and /healthz must not depend on Redis.
PROBES = frozenset({HEALTHZ, READYZ})


def pattern(path: str) -> re.Pattern[str]:
    """A route path as a regex for the whole path: each `{name}` is one path segment, a group `name`."""
    return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path)) + "$")


def job_url(job_id: str) -> str:
    return JOB.format(job_id=job_id)


# What the middlewares match before routing.
IMAGES_ROUTE = pattern(IMAGES)
LOOKUP_ROUTE = pattern(IMAGES + LOOKUP)
IMPORT_ROUTE = pattern(IMPORTS)
SEARCH_ROUTE = pattern(SEARCH)
BATCH_ROUTE = pattern(SEARCH_BATCH)
JOB_ROUTE = pattern(JOB)
# Routes whose body is a multipart upload (files): these get the general request cap.
UPLOAD_ROUTES = (IMAGES_ROUTE, SEARCH_ROUTE, BATCH_ROUTE)
