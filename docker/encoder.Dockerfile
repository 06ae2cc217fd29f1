# Glimpse encoder service (open_clip text and image embeddings), port 8001.
# Build from the repository root (the context is the repo; .dockerignore keeps it small):
#   docker build -f docker/encoder.Dockerfile -t glimpse-encoder .
# CPU torch by default. The GPU override (docker-compose.gpu.yml) passes a CUDA wheel index.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- the code, on its own so that the final stage copies only what it needs ---
FROM scratch AS src
COPY glimpse/__init__.py /app/glimpse/__init__.py
COPY glimpse/contracts /app/glimpse/contracts
COPY glimpse/imaging.py /app/glimpse/imaging.py
COPY glimpse/encoder /app/glimpse/encoder
COPY glimpse/web /app/glimpse/web

# --- builder: a virtualenv with the `encoder` extra, nothing else ---
FROM ${PYTHON_IMAGE} AS builder
# Where torch and torchvision come from. Default: the PyTorch CPU wheels (no CUDA libraries,
# about 1 GB smaller). GPU: e.g. https://download.pytorch.org/whl/cu128. A build that cannot
# reach download.pytorch.org may pass https://pypi.org/simple (PyPI's torch carries CUDA).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Optional CA bundle (a path inside the base image) for pip behind a TLS-intercepting proxy.
ARG PIP_CERT_FILE=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180
# torch first, in a layer of its own that does not depend on pyproject.toml: an edit there
# (another extra, a tool setting) then reinstalls the small packages, not the GBs of torch.
RUN set -eu; \
    if [ -n "$PIP_CERT_FILE" ]; then export PIP_CERT="$PIP_CERT_FILE"; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --index-url "$TORCH_INDEX_URL" torch torchvision
WORKDIR /src
COPY pyproject.toml README.md ./
# The project is installed only to resolve its `encoder` extra (torch is already satisfied) and
# then removed: the code lives in /app.
RUN set -eu; \
    if [ -n "$PIP_CERT_FILE" ]; then export PIP_CERT="$PIP_CERT_FILE"; fi; \
    /opt/venv/bin/pip install '.[encoder]'; \
    /opt/venv/bin/pip uninstall -y glimpse; \
    /opt/venv/bin/python -c "import torch, open_clip, onnx, onnxruntime; print('torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)"

# --- final image: the venv and the code; no compiler, no pip cache; runs as uid 10001 ---
FROM ${PYTHON_IMAGE}
# /cache is the model cache volume (weights fetched on first start) and the user's HOME, so
# every cache a library writes under ~ lands in the volume. A fresh named volume takes the
# owner of the directory it is mounted on, so the service can write it.
RUN set -eu; \
    groupadd --system --gid 10001 glimpse; \
    useradd --system --uid 10001 --gid glimpse --home-dir /cache --no-create-home \
        --shell /usr/sbin/nologin glimpse; \
    mkdir -p /cache; chown glimpse:glimpse /cache
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/cache \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch
WORKDIR /app
USER glimpse:glimpse
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/readyz', timeout=4)"]
CMD ["uvicorn", "glimpse.encoder.main:app", "--host", "0.0.0.0", "--port", "8001"]
# The copies come last, the venv (the big layer) at the very end: on copy-based storage drivers
# (vfs) every later step would copy it again. The files stay root-owned: the service cannot
# change its own code. A code change re-copies the venv, it never re-downloads it.
COPY --from=src /app /app
COPY --from=builder /opt/venv /opt/venv
