# Glimpse gateway (public API, media store, web page), port 8000. Media lives in /media.
# Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t glimpse-gateway .
# The image also carries the `glimpse` command's modules (and the small `scripts` extra they need), so a host
# without Python can ingest a folder with `docker compose run` (see docs/deploy.md).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM scratch AS src
COPY glimpse/__init__.py /app/glimpse/__init__.py
COPY glimpse/contracts /app/glimpse/contracts
COPY glimpse/imaging.py /app/glimpse/imaging.py
COPY glimpse/gateway /app/glimpse/gateway
COPY glimpse/web /app/glimpse/web
COPY glimpse/frontend /app/glimpse/frontend
COPY glimpse/cli /app/glimpse/cli

FROM ${PYTHON_IMAGE} AS builder
# Optional CA bundle (a path inside the base image) for pip behind a TLS-intercepting proxy.
ARG PIP_CERT_FILE=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180
WORKDIR /src
COPY pyproject.toml README.md ./
# The project is installed only to resolve its extras and then removed: the code is in /app.
RUN set -eu; \
    if [ -n "$PIP_CERT_FILE" ]; then export PIP_CERT="$PIP_CERT_FILE"; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install '.[gateway,scripts]'; \
    /opt/venv/bin/pip uninstall -y glimpse

# --- final image: the venv and the code; no compiler, no pip cache; runs as uid 10001 ---
FROM ${PYTHON_IMAGE}
# /media is the media store volume (originals and thumbnails). A fresh named volume takes the
# owner of the directory it is mounted on, so the service can write it.
RUN set -eu; \
    groupadd --system --gid 10001 glimpse; \
    useradd --system --uid 10001 --gid glimpse --home-dir /media --no-create-home \
        --shell /usr/sbin/nologin glimpse; \
    mkdir -p /media; chown glimpse:glimpse /media
# One BLAS thread a process: the gateway's cores go to its worker processes, and the
# duplicates pass's numpy on a busy machine ran 20-30x slower with a thread per core
# (bench_duplicates.py, issue 23).
ENV PATH=/opt/venv/bin:$PATH \
    OPENBLAS_NUM_THREADS=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/media \
    GATEWAY_MEDIA_DIR=/media \
    GATEWAY_ENCODER_URL=http://encoder:8001 \
    GATEWAY_INDEX_URL=http://index:8002 \
    UVICORN_HTTP=glimpse.gateway.security:SlowClientProtocol
WORKDIR /app
USER glimpse:glimpse
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# GATEWAY_WORKERS worker processes (default: the CPU count); they share nothing but /media
# (docs/ingest.md). A shell expands the default; the app's name is its $0.
CMD ["sh", "-c", "exec uvicorn \"$0\" --host 0.0.0.0 --port 8000 --workers \"${GATEWAY_WORKERS:-$(nproc)}\"", "glimpse.gateway.main:app"]
# The copies come last, the venv (the big layer) at the very end: on copy-based storage drivers
# (vfs) every later step would copy it again. The files stay root-owned: the service cannot
# change its own code. A code change re-copies the venv, it never re-downloads it.
COPY --from=src /app /app
COPY --from=builder /opt/venv /opt/venv
