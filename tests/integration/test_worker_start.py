import subprocess
import sys

from tests.integration.services import ROOT, service_env


def test_worker_without_weights_stops_with_a_clear_message(redis_url: str, tmp_path) -> None:
    env = service_env(redis_url, EMBEDDING_WEIGHTS=str(tmp_path / "missing.h5"), KERAS_HOME=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-l", "INFO"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "cannot start" in output and "EMBEDDING_WEIGHTS=random" in output
