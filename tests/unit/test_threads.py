"""A worker searches with SEARCH_THREADS threads in every numeric runtime, heavy jobs with all cores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, numpy, sklearn.cluster
from threadpoolctl import threadpool_info
from worker.model.threads import all_cores, cpus, limit_search_threads
from shared.ann import _faiss

def counts():
    return sorted({(i["internal_api"], i["num_threads"]) for i in threadpool_info()})

limit_search_threads(1)
searching = counts(); faiss_searching = _faiss().omp_get_max_threads()
with all_cores():
    heavy = counts()
print(json.dumps({"searching": searching, "faiss": faiss_searching, "heavy": heavy, "after": counts(), "cpus": cpus()}))
"""


def test_search_threads_cap_every_runtime_and_heavy_jobs_get_every_core() -> None:
    # A fresh interpreter: the limits are process-wide and would leak into other tests.
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    apis = {api for api, _ in seen["searching"]}
    assert {"openblas", "openmp"} <= apis  # numpy's BLAS and the OpenMP of faiss / scikit-learn
    assert all(n == 1 for _, n in seen["searching"])
    assert seen["faiss"] == 1
    assert all(n == seen["cpus"] for _, n in seen["heavy"])
    assert seen["after"] == seen["searching"]
