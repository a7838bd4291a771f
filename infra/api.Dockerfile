# The API image: FastAPI + the Celery producer. No TensorFlow.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY api ./api
COPY shared ./shared
COPY worker ./worker
RUN pip install --no-cache-dir -c constraints.txt ".[api]"
RUN useradd --system --uid 10001 simsearch && mkdir -p /data/blobs && chown simsearch /data/blobs
USER simsearch
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"
# --no-proxy-headers: uvicorn would believe X-Forwarded-For from FORWARDED_ALLOW_IPS and rewrite the
# client address that rate limits count against; the API derives it itself (TRUSTED_PROXIES).
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-proxy-headers"]
