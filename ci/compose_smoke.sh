#!/usr/bin/env bash
# Compose smoke test (`make smoke`): the real images, the real docker-compose.yml, a real engine.
#
#   1. an engine: the one `docker info` answers, else its own dockerd (vfs storage, no iptables,
#      no default bridge, its own data root, stopped and wiped at exit); docker.io and
#      docker-compose are installed with apt-get when missing and we are root;
#   2. the Python base image: used when present, pulled when the engine can pull, else a
#      stand-in built with debootstrap (bookworm's python3 is 3.11) and `docker import`ed under
#      the exact name the Dockerfiles use;
#   3. `compose build` with the tiny test model (ENCODER_MODEL=glimpse-tiny, ENCODER_PRETRAINED=none,
#      INDEX_DIM=64: no weights needed), `compose up -d`, waits for health;
#   4. ingests sample photos through the published port (glimpse.cli.ingest from the host venv,
#      else curl), checks a text and an image search, and that their thumbnails load;
#   5. `compose down` (volumes kept) and `up` again: the same images and hits are still there;
#   6. `compose down -v`, prints the wall time of each phase and the image sizes.
# Works with Compose v2 (`docker compose`) and v1 (`docker-compose` 1.29).
#
# Environment knobs (all optional):
#   GLIMPSE_COMPOSE            the compose command ("docker compose" or "docker-compose")
#   GLIMPSE_SMOKE_OWN_ENGINE=1 start an own dockerd even when one answers
#   GLIMPSE_SMOKE_DATA_ROOT    parent folder of the own engine's data root (default /var/tmp)
#   GLIMPSE_SMOKE_TORCH_INDEX_URL  torch wheel index (default: the PyTorch CPU index when it
#                              answers, else PyPI, whose torch carries CUDA and is much bigger)
#   GLIMPSE_SMOKE_PIP_CERT_FILE    CA bundle path inside the base image for pip (the stand-in
#                              gets this host's bundle and sets it by itself)
#   GLIMPSE_SMOKE_BUILD_NETWORK    network of the build steps (default: host for an own engine)
#   GLIMPSE_SMOKE_KEEP_IMAGES=0    remove the smoke images at the end on an existing engine
#   GLIMPSE_SMOKE_CACHE        where the stand-in base rootfs tarball is cached (artifacts/smoke)
set -euo pipefail

ROOT="${GLIMPSE_SMOKE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
cd "$ROOT"
T0=$(date +%s)
PROJECT="glimpsesmoke$$"
WORK="$(mktemp -d /tmp/glimpse-smoke.XXXXXX)"
BASE_IMAGE="python:3.11-slim-bookworm" # what the Dockerfiles' FROM names
OWN_ENGINE=0
ENGINE_PID=""
ENGINE_DATA=""
ENGINE_EXEC=""
STACK_UP=0
PHASES=()

log() { printf '[smoke %5ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() {
    log "FAIL: $*"
    exit 1
}
phase_start() {
    PHASE_NAME="$1"
    PHASE_T0=$(date +%s)
    log "== $1"
}
phase_end() { PHASES+=("$(printf '%-34s %5ss' "$PHASE_NAME" "$(($(date +%s) - PHASE_T0))")"); }

# ---------------------------------------------------------------------------------- cleanup
cleanup() {
    local rc=$?
    set +e
    if [ "$STACK_UP" = 1 ]; then
        if [ "$rc" != 0 ]; then
            log "logs of the stack (last 60 lines per service):"
            compose logs --no-color --tail 60 >&2
        fi
        log "tearing the stack down (volumes included)"
        compose down -v --remove-orphans >/dev/null 2>&1
    fi
    if [ "$OWN_ENGINE" = 0 ] && [ "${GLIMPSE_SMOKE_KEEP_IMAGES:-1}" = 0 ]; then
        docker image rm glimpse-encoder:smoke glimpse-index:smoke glimpse-gateway:smoke \
            >/dev/null 2>&1
    fi
    if [ -n "$ENGINE_PID" ]; then
        log "stopping the own dockerd (pid $ENGINE_PID) and wiping $ENGINE_DATA"
        kill "$ENGINE_PID" 2>/dev/null
        for _ in $(seq 1 60); do
            kill -0 "$ENGINE_PID" 2>/dev/null || break
            sleep 1
        done
        kill -9 "$ENGINE_PID" 2>/dev/null
        # Anything the engine left mounted under its roots (shm, netns) before the wipe.
        awk -v d="$ENGINE_DATA" -v e="$ENGINE_EXEC" 'index($2, d) == 1 || index($2, e) == 1 {print $2}' \
            /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
        rm -rf "$ENGINE_DATA" "$ENGINE_EXEC"
    fi
    rm -rf "$WORK"
    if [ "$rc" = 0 ]; then
        log "PASS in $(($(date +%s) - T0)) s"
    else
        log "FAILED (exit $rc) after $(($(date +%s) - T0)) s"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------- engine
engine_answers() { timeout 20 docker info >/dev/null 2>&1; }

install_engine() {
    if command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1; then
        return
    fi
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 ||
        die "no Docker engine answers and none can be installed here (need root and apt-get)"
    log "installing Debian's docker.io and docker-compose"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq -o DPkg::Lock::Timeout=600 docker.io docker-compose >/dev/null
}

start_own_engine() {
    install_engine
    [ "$(id -u)" = 0 ] || die "starting an own dockerd needs root"
    ENGINE_DATA="$(mktemp -d "${GLIMPSE_SMOKE_DATA_ROOT:-/var/tmp}/glimpse-smoke-docker.XXXXXX")"
    ENGINE_EXEC="/run/glimpse-smoke-$$"
    mkdir -p "$ENGINE_EXEC"
    log "starting an own dockerd (vfs, no iptables, no default bridge), data root $ENGINE_DATA"
    dockerd --storage-driver=vfs --iptables=false --ip-masq=false --bridge=none \
        --data-root "$ENGINE_DATA" --exec-root "$ENGINE_EXEC/exec" \
        --pidfile "$ENGINE_EXEC/dockerd.pid" -H "unix://$ENGINE_EXEC/docker.sock" \
        >"$WORK/dockerd.log" 2>&1 &
    ENGINE_PID=$!
    OWN_ENGINE=1
    export DOCKER_HOST="unix://$ENGINE_EXEC/docker.sock"
    for _ in $(seq 1 60); do
        engine_answers && return
        kill -0 "$ENGINE_PID" 2>/dev/null || break
        sleep 1
    done
    tail -20 "$WORK/dockerd.log" >&2
    die "the own dockerd did not come up"
}

# ---------------------------------------------------------------------------------- compose
pick_compose() {
    if [ -n "${GLIMPSE_COMPOSE:-}" ]; then
        read -r -a COMPOSE <<<"$GLIMPSE_COMPOSE"
    elif docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    else
        install_engine
        command -v docker-compose >/dev/null 2>&1 || die "no Compose (v2 plugin or v1) found"
        COMPOSE=(docker-compose)
    fi
    log "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version 2>/dev/null | head -1))"
}

# BuildKit builds skip unused stages and do not commit a layer per metadata step (on vfs the
# classic builder copies the whole image for each ENV or USER line). Compose v2 builds with
# BuildKit itself; v1 hands the build to `docker build` (COMPOSE_DOCKER_CLI_BUILD=1), which then
# needs a CLI that can: one with buildx, or a 20.x CLI with BuildKit built in.
pick_builder() {
    if [ "${COMPOSE[0]}" = docker ] && [ "${COMPOSE[1]:-}" = compose ]; then
        export DOCKER_BUILDKIT=1
        return
    fi
    export COMPOSE_DOCKER_CLI_BUILD=1 DOCKER_BUILDKIT=1
    local cli
    if docker buildx version >/dev/null 2>&1; then
        return
    fi
    while read -r cli; do
        local major
        major="$("$cli" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)"
        if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then
            mkdir -p "$WORK/bin"
            ln -sf "$cli" "$WORK/bin/docker"
            export PATH="$WORK/bin:$PATH"
            log "builds: BuildKit through $cli (the first docker on PATH has no buildx)"
            return
        fi
    done < <(type -ap docker)
    log "builds: no BuildKit-capable docker CLI, using the classic builder (slower)"
    export COMPOSE_DOCKER_CLI_BUILD=0 DOCKER_BUILDKIT=0
}

# Creating a container copies its whole image on vfs (GBs for the encoder): Compose v1's
# default 60 s API timeout is too short for that.
export COMPOSE_HTTP_TIMEOUT="${COMPOSE_HTTP_TIMEOUT:-900}" DOCKER_CLIENT_TIMEOUT="${DOCKER_CLIENT_TIMEOUT:-900}"

compose() {
    "${COMPOSE[@]}" --env-file "$WORK/smoke.env" -p "$PROJECT" \
        -f docker-compose.yml ${BUILD_OVERRIDE:+-f "$BUILD_OVERRIDE"} "$@"
}

# ---------------------------------------------------------------------------------- base image
apt_mirror() {
    local m=""
    m="$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' |
        grep -v security | head -1 || true)"
    if [ -z "$m" ]; then
        m="$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
            /etc/apt/sources.list 2>/dev/null | grep -v security | head -1 || true)"
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

build_standin_base() {
    local cache_dir="${GLIMPSE_SMOKE_CACHE:-$ROOT/artifacts/smoke}"
    local tarball="$cache_dir/python-3.11-bookworm-standin.tar"
    if [ ! -s "$tarball" ]; then
        command -v debootstrap >/dev/null 2>&1 || {
            [ "$(id -u)" = 0 ] || die "debootstrap is missing (apt-get install debootstrap)"
            apt-get install -y -qq -o DPkg::Lock::Timeout=600 debootstrap >/dev/null
        }
        local mirror rootfs="$WORK/rootfs"
        mirror="$(apt_mirror)"
        log "debootstrap bookworm from $mirror (python3, venv, pip, CA certificates)"
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
            {
                tail -20 "$WORK/debootstrap.log" >&2
                die "debootstrap failed"
            }
        # This host's CA bundle, so pip trusts what this host trusts (e.g. an egress proxy).
        cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
        ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        mkdir -p "$cache_dir"
        tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
    else
        log "stand-in base rootfs from the cache: $tarball"
    fi
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        --change 'LABEL org.glimpse.smoke-standin=1' \
        "$tarball" "$BASE_IMAGE" >/dev/null
    STANDIN=1
}

ensure_base_image() {
    STANDIN=0
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image $BASE_IMAGE is present"
        # A stand-in left by an earlier run carries this host's CA bundle: pip needs it named.
        if [ "$(docker image inspect -f '{{index .Config.Labels "org.glimpse.smoke-standin"}}' \
            "$BASE_IMAGE" 2>/dev/null)" = 1 ]; then
            STANDIN=1
        fi
        return
    fi
    if [ "$OWN_ENGINE" = 0 ] && timeout 300 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
        log "pulled $BASE_IMAGE"
        return
    fi
    log "$BASE_IMAGE cannot be pulled here: building a stand-in"
    build_standin_base
}

# ---------------------------------------------------------------------------------- checks
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_checker() {
    cat >"$WORK/check.py" <<'PY'
"""HTTP checks of the smoke test against the published gateway (stdlib only)."""
import json
import mimetypes
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

BASE = sys.argv[1].rstrip("/")


def call(method, path, body=None, headers=None, timeout=60):
    url = path if path.startswith(("http://", "https://")) else BASE + path
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


def get_json(path):
    return json.loads(call("GET", path)[2])


def post_json(path, payload):
    body = json.dumps(payload).encode()
    return json.loads(call("POST", path, body, {"Content-Type": "application/json"})[2])


def multipart(fields):
    boundary = uuid.uuid4().hex
    out = bytearray()
    for name, filename, data in fields:
        out += f"--{boundary}\r\n".encode()
        if filename is None:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        else:
            ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
            out += (f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                    f"Content-Type: {ctype}\r\n\r\n").encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def wait_ready(timeout):
    deadline = time.monotonic() + float(timeout)
    last = ""
    while time.monotonic() < deadline:
        try:
            status, _, body = call("GET", "/readyz", timeout=5)
            if status == 200:
                return
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(2)
    sys.exit(f"gateway not ready after {timeout} s: {last}")


def ingest_stdlib(folder):
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    body, headers = multipart(
        [("files", p.relative_to(folder).as_posix(), p.read_bytes()) for p in files])
    answer = json.loads(call("POST", "/ingest", body, headers, timeout=300)[2])
    bad = [i for i in answer["items"] if i["status"] not in ("added", "exists")]
    if bad:
        sys.exit(f"ingest rejected: {bad}")
    print(f"ingested {len(answer['items'])} files with one multipart request")


def check_thumbnails(results, want):
    for hit in results[:want]:
        status, ctype, data = call("GET", hit["thumbnail_url"])
        if status != 200 or not ctype.startswith("image/") or len(data) < 100:
            sys.exit(f"thumbnail {hit['thumbnail_url']}: {status} {ctype} {len(data)} bytes")


def searches(folder, expect_count, out_file):
    stats = get_json("/stats")
    if stats["images"] != int(expect_count):
        sys.exit(f"/stats says {stats['images']} images, expected {expect_count}")
    text = post_json("/search/text", {"query": "a photo of a cat", "k": 5})
    if len(text["results"]) != min(5, int(expect_count)):
        sys.exit(f"text search: {len(text['results'])} results: {text}")
    check_thumbnails(text["results"], 5)
    query = sorted(p for p in Path(folder).rglob("*") if p.is_file())[0]
    body, headers = multipart([("file", query.name, query.read_bytes()), ("k", None, b"3")])
    image = json.loads(call("POST", "/search/image", body, headers)[2])
    top = image["results"][0]
    # The same bytes give the same vector: the photo itself must come first.
    if top["path"] != query.relative_to(folder).as_posix() or top["score"] < 0.99:
        sys.exit(f"image search of {query.name}: top hit {top}")
    check_thumbnails(image["results"], 3)
    status, ctype, data = call("GET", top["image_url"])
    if status != 200 or data != query.read_bytes():
        sys.exit(f"original {top['image_url']}: {status} {ctype}, not the uploaded bytes")
    seen = {"text": [h["id"] for h in text["results"]], "image_top": top["id"],
            "images": stats["images"]}
    print(f"stats: {stats['images']} images; text search ids {seen['text']} "
          f"({text['total_ms']:.1f} ms); image search top hit {top['path']} "
          f"score {top['score']:.4f}; thumbnails and original load")
    if out_file != "-":
        previous = Path(out_file)
        if previous.exists():
            before = json.loads(previous.read_text())
            if before != seen:
                sys.exit(f"after the restart the answers changed: {before} -> {seen}")
            print("after the restart: the same images, the same hits")
        else:
            previous.write_text(json.dumps(seen))


if __name__ == "__main__":
    command = sys.argv[2]
    if command == "wait":
        wait_ready(sys.argv[3])
    elif command == "ingest":
        ingest_stdlib(sys.argv[3])
    elif command == "searches":
        searches(sys.argv[3], sys.argv[4], sys.argv[5])
PY
}

# A few real photos: the sample images scikit-image ships (host venv), else random ones drawn
# with numpy and Pillow, else small PNGs written with the standard library.
write_photos() {
    local dir="$1" py="$2"
    mkdir -p "$dir"
    "$py" - "$dir" <<'PY'
import sys
from pathlib import Path

out = Path(sys.argv[1])
try:
    import numpy as np
    from PIL import Image
except ImportError:
    Image = None
if Image is not None:
    try:
        import skimage.data as sk
        for name in ("astronaut", "coffee", "chelsea", "rocket"):
            Image.fromarray(np.asarray(getattr(sk, name)())).convert("RGB").save(
                out / f"{name}.jpg", quality=90)
        Image.fromarray(sk.camera()).save(out / "camera.png")
    except Exception:
        rng = np.random.default_rng(0)
        for i in range(5):
            arr = (rng.random((240, 320, 3)) * 255).astype("uint8")
            Image.fromarray(arr).save(out / f"photo{i}.jpg", quality=90)
else:  # stdlib only: 5 small PNGs
    import struct
    import zlib

    def png(w, h, seed):
        raw = b"".join(b"\0" + bytes(((x * seed + y * 7) % 256) for x in range(w * 3))
                       for y in range(h))
        def chunk(t, d):
            return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    for i in range(5):
        (out / f"photo{i}.png").write_bytes(png(96, 64, i + 3))
print(len(list(out.iterdir())))
PY
}

# ================================================================================== main
phase_start "engine"
if [ "${GLIMPSE_SMOKE_OWN_ENGINE:-0}" != 1 ] && command -v docker >/dev/null 2>&1 && engine_answers; then
    log "using the engine that answers ($(docker info --format '{{.ServerVersion}} {{.Driver}}' 2>/dev/null))"
else
    start_own_engine
fi
pick_compose
pick_builder
phase_end

phase_start "base image"
ensure_base_image
phase_end

# The smoke settings, in an env file of our own, so a developer's .env never leaks in.
PORT="$(free_port)"
TORCH_INDEX="${GLIMPSE_SMOKE_TORCH_INDEX_URL:-}"
if [ -z "$TORCH_INDEX" ]; then
    if curl -sf -o /dev/null --max-time 15 https://download.pytorch.org/whl/cpu/torch/; then
        TORCH_INDEX="https://download.pytorch.org/whl/cpu"
    else
        TORCH_INDEX="https://pypi.org/simple"
        log "the PyTorch CPU index does not answer: torch comes from PyPI (the CUDA build, GBs)"
    fi
fi
PIP_CERT="${GLIMPSE_SMOKE_PIP_CERT_FILE:-}"
if [ -z "$PIP_CERT" ] && [ "$STANDIN" = 1 ]; then
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
fi
cat >"$WORK/smoke.env" <<EOF
GLIMPSE_BIND=127.0.0.1
GLIMPSE_PORT=$PORT
GLIMPSE_TAG=smoke
TORCH_INDEX_URL=$TORCH_INDEX
PIP_CERT_FILE=$PIP_CERT
ENCODER_MODEL=glimpse-tiny
ENCODER_PRETRAINED=none
INDEX_DIM=64
EOF
BUILD_NETWORK="${GLIMPSE_SMOKE_BUILD_NETWORK:-}"
[ -z "$BUILD_NETWORK" ] && [ "$OWN_ENGINE" = 1 ] && BUILD_NETWORK=host
BUILD_OVERRIDE=""
if [ -n "$BUILD_NETWORK" ]; then
    BUILD_OVERRIDE="$WORK/build-network.yml"
    cat >"$BUILD_OVERRIDE" <<EOF
services:
  encoder:
    build:
      network: $BUILD_NETWORK
  index:
    build:
      network: $BUILD_NETWORK
  gateway:
    build:
      network: $BUILD_NETWORK
EOF
fi
compose config -q || die "compose rejects docker-compose.yml"

phase_start "build (3 images)"
# PyPI's torch brings GBs of CUDA libraries, and vfs stores every layer and container as a full
# copy: check the space first rather than fill the disk halfway through.
DISK_DIR="${ENGINE_DATA:-$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib)}"
FREE_GB="$(df -BG --output=avail "$DISK_DIR" 2>/dev/null | tail -1 | tr -dc 0-9)"
NEED_GB="${GLIMPSE_SMOKE_MIN_FREE_GB:-10}"
if [ "$TORCH_INDEX" = https://pypi.org/simple ] && [ "$OWN_ENGINE" = 1 ]; then
    NEED_GB="${GLIMPSE_SMOKE_MIN_FREE_GB:-35}"
fi
log "disk: ${FREE_GB:-?} GB free under $DISK_DIR (this run needs about $NEED_GB GB)"
if [ -n "$FREE_GB" ] && [ "$FREE_GB" -lt "$NEED_GB" ]; then
    die "not enough disk space for the images (GLIMPSE_SMOKE_MIN_FREE_GB overrides the check)"
fi
compose build >"$WORK/build.log" 2>&1 || {
    tail -60 "$WORK/build.log" >&2
    die "compose build failed"
}
phase_end

phase_start "up + healthy"
STACK_UP=1
compose up -d || die "compose up failed"
write_checker
python3 "$WORK/check.py" "http://127.0.0.1:$PORT" wait 600
phase_end

phase_start "isolation checks"
for svc in encoder index gateway; do
    uid="$(compose exec -T "$svc" id -u | tr -d '\r')"
    [ "$uid" != 0 ] || die "$svc runs as root"
done
for svc_port in encoder:8001 index:8002; do
    published="$(compose port "${svc_port%%:*}" "${svc_port##*:}" 2>/dev/null || true)"
    [ -z "$published" ] || [ "$published" = ":0" ] || die "${svc_port%%:*} publishes $published"
done
log "every service runs as a non-root user; only the gateway publishes a port"
phase_end

phase_start "ingest + searches"
PHOTOS="$WORK/photos"
HOST_PY=python3
[ -x "$ROOT/.venv/bin/python" ] && HOST_PY="$ROOT/.venv/bin/python"
N="$(write_photos "$PHOTOS" "$HOST_PY")"
if [ -d glimpse/cli/ingest ] && "$HOST_PY" -c 'import httpx' 2>/dev/null; then
    log "ingesting $N photos with glimpse.cli.ingest"
    "$HOST_PY" -m glimpse.cli.ingest "$PHOTOS" --url "http://127.0.0.1:$PORT" \
        --report "$WORK/ingest-report.jsonl" --quiet || die "glimpse.cli.ingest failed"
else
    log "ingesting $N photos with one multipart POST /ingest"
    python3 "$WORK/check.py" "http://127.0.0.1:$PORT" ingest "$PHOTOS"
fi
python3 "$WORK/check.py" "http://127.0.0.1:$PORT" searches "$PHOTOS" "$N" "$WORK/answers.json" ||
    die "search checks failed"
# The documented form for hosts without Python: the gateway image runs the same script on a
# mounted folder, over the private network. Everything is there already: it must upload nothing.
chmod -R a+rX "$WORK"
compose run --rm --no-deps -T -v "$PHOTOS:/photos:ro" gateway \
    python -m glimpse.cli.ingest /photos --url http://gateway:8000 --report /tmp/ingest-report.jsonl \
    --json >"$WORK/run-ingest.json" || die "ingest through 'compose run' failed"
python3 - "$WORK/run-ingest.json" "$N" <<'PY' || die "ingest through 'compose run' uploaded again"
import json, sys
s = json.loads(open(sys.argv[1]).read())
print(f"compose run ingest: added {s['added']}, already there {s['already'] + s['exists']}")
sys.exit(s["added"] != 0 or s["already"] + s["exists"] != int(sys.argv[2]))
PY
phase_end

phase_start "restart (down, up): data kept"
compose down || die "compose down failed"
compose up -d || die "compose up (restart) failed"
python3 "$WORK/check.py" "http://127.0.0.1:$PORT" wait 600
python3 "$WORK/check.py" "http://127.0.0.1:$PORT" searches "$PHOTOS" "$N" "$WORK/answers.json" ||
    die "the data did not survive the restart"
phase_end

phase_start "teardown (down -v)"
compose down -v --remove-orphans || die "compose down -v failed"
STACK_UP=0
left="$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")"
[ -z "$left" ] || die "volumes left behind: $left"
phase_end

log "image sizes:"
docker image ls --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E 'glimpse-.*:smoke' >&2 || true
log "wall time per phase:"
for p in "${PHASES[@]}"; do log "  $p"; done
