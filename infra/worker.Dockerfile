# The worker image: Celery + TensorFlow (CPU) + the model registry.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 \
    KERAS_HOME=/cache/keras SIMSEARCH_CACHE_DIR=/cache/simsearch
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY api ./api
COPY shared ./shared
COPY worker ./worker
RUN pip install --no-cache-dir -c constraints.txt ".[worker]"
RUN useradd --system --uid 10001 simsearch && mkdir -p /cache /data/blobs && chown simsearch /cache /data/blobs
USER simsearch
VOLUME ["/cache"]
CMD ["celery", "-A", "worker.app", "worker", "-l", "INFO"]
