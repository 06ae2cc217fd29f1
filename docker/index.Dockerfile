# Glimpse index service (Faiss + SQLite), port 8002. Data lives in /data (a named volume).
# Build from the repository root:
#   docker build -f docker/index.Dockerfile -t glimpse-index .
# faiss-cpu by default; the GPU override (docker-compose.gpu.yml) passes FAISS_PACKAGE=faiss-gpu-cu12.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM scratch AS src
COPY glimpse/__init__.py /app/glimpse/__init__.py
COPY glimpse/contracts /app/glimpse/contracts
COPY glimpse/index /app/glimpse/index
COPY glimpse/web /app/glimpse/web

FROM ${PYTHON_IMAGE} AS builder
# The Faiss wheel: faiss-cpu (what the `index` extra names) or a GPU build such as faiss-gpu-cu12,
# which then replaces faiss-cpu (both install the same `faiss` module).
ARG FAISS_PACKAGE=faiss-cpu
# More extras beside `index`, e.g. `milvus` (pymilvus) for INDEX_BACKEND=milvus
# (docker-compose.milvus.yml passes it).
ARG INDEX_EXTRAS=
# Optional CA bundle (a path inside the base image) for pip behind a TLS-intercepting proxy.
ARG PIP_CERT_FILE=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180
WORKDIR /src
COPY pyproject.toml README.md ./
# The project is installed only to resolve its `index` extra and then removed: the code is in /app.
RUN set -eu; \
    if [ -n "$PIP_CERT_FILE" ]; then export PIP_CERT="$PIP_CERT_FILE"; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install '.[index]'; \
    if [ -n "$INDEX_EXTRAS" ]; then /opt/venv/bin/pip install ".[$INDEX_EXTRAS]"; fi; \
    /opt/venv/bin/pip uninstall -y glimpse; \
    case "$FAISS_PACKAGE" in \
        faiss-cpu|faiss-cpu[=\<\>]*) ;; \
        *) /opt/venv/bin/pip uninstall -y faiss-cpu; /opt/venv/bin/pip install "$FAISS_PACKAGE" ;; \
    esac; \
    /opt/venv/bin/python -c "import faiss; print('faiss', faiss.__version__)"

# --- final image: the venv and the code; no compiler, no pip cache; runs as uid 10001 ---
FROM ${PYTHON_IMAGE}
# /data is the index volume (SQLite store and Faiss snapshots). A fresh named volume takes the
# owner of the directory it is mounted on, so the service can write it.
RUN set -eu; \
    groupadd --system --gid 10001 glimpse; \
    useradd --system --uid 10001 --gid glimpse --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin glimpse; \
    mkdir -p /data; chown glimpse:glimpse /data
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/data \
    INDEX_DATA_DIR=/data
WORKDIR /app
USER glimpse:glimpse
EXPOSE 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8002/readyz', timeout=4)"]
CMD ["uvicorn", "glimpse.index.main:app", "--host", "0.0.0.0", "--port", "8002"]
# The copies come last, the venv (the big layer) at the very end: on copy-based storage drivers
# (vfs) every later step would copy it again. The files stay root-owned: the service cannot
# change its own code. A code change re-copies the venv, it never re-downloads it.
COPY --from=src /app /app
COPY --from=builder /opt/venv /opt/venv
