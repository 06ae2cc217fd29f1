#!/usr/bin/env bash
# The GPU rows in one run, for a machine with one NVIDIA GPU (an H100/H200 in our measurements):
#   1. bench/gpu_check.py: fp16 and the nvJPEG path agree with the fp32 CPU path;
#   2. bench/bench_encoder.py: the raw model vs the encoder service, JPEG bytes over HTTP, fp16,
#      with the JPEGs decoded on the GPU and then by the CPU pool;
#   3. bench/bench_host.py: the encoder service's host-side CPU per image on this machine's
#      cores, the device replaced by an instant stand-in (the ceiling the host sets, issue 16);
#   4. bench/bench_ingest.py: ingest end to end through the gateway vs the encoder alone;
#   5. bench/bench_search.py: what the gateway adds to a search, with the tiny model (issue
#      #4's figure, on this host's cores) and with ViT-B-32 on the GPU.
# Each step has its own time limit, writes its whole output to OUTDIR/<step>.log and prints its
# last lines; a failed step does not stop the next. Sizes can be made smaller for a dry run on a
# CPU (GPU_BENCH_DEVICE=cpu, GPU_BENCH_MODEL=glimpse-tiny and the sizes below).
#
#   bash bench/gpu_bench.sh OUTDIR
#   GPU_BENCH_STEPS="check encoder ingest" bash bench/gpu_bench.sh OUTDIR   # some steps only
# The device tool allows 600 s per command: the default steps need two calls, e.g.
#   GPU_BENCH_STEPS="check encoder host ingest" ...   then   GPU_BENCH_STEPS="search-tiny search" ...
# The last lines (summary) put the service from JPEG bytes, the raw forward, the host ceiling
# and ingest end to end side by side.
set -u
out=${1:-gpu-bench-out}
mkdir -p "$out"
py=${PYTHON:-python3}
device=${GPU_BENCH_DEVICE:-cuda}
precision=fp16
[ "$device" = cpu ] && precision=fp32
model=${GPU_BENCH_MODEL:-ViT-B-32}
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

steps=" ${GPU_BENCH_STEPS:-check encoder host ingest search-tiny search} "

want() { case "$steps" in *" $1 "*) return 0 ;; esac; return 1; }

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2 start rc
  shift 2
  echo "== $name (limit ${limit} s): $*"
  start=$(date +%s)
  timeout -k 15 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "== $name: exit $rc after $(($(date +%s) - start)) s"
  tail -n "${TAIL_LINES:-22}" "$out/$name.log"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
    --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$py" -c 'import os, sys, torch, torchvision, open_clip, faiss, PIL, fastapi
print(sys.version.split()[0], "torch", torch.__version__, "torchvision", torchvision.__version__,
      "open_clip", open_clip.__version__, "faiss", faiss.__version__, "pillow", PIL.__version__,
      "fastapi", fastapi.__version__, "cpus", os.cpu_count(),
      "cuda", torch.cuda.is_available() and torch.cuda.get_device_name())'
} 2>&1 | tee "$out/env.log"

want check && step check "${CHECK_LIMIT:-60}" "$py" bench/gpu_check.py --device "$device" --model "$model"

# The service with each JPEG decoder (ENCODER_GPU_DECODE=auto picks one by timing both at
# warm-up; its choice is printed in each run's header).
for mode in ${GPU_BENCH_DECODE_MODES:-on off}; do
  want encoder && step "encoder-$mode" "${ENCODER_LIMIT:-140}" "$py" bench/bench_encoder.py --model "$model" \
    --device "$device" --precision "$precision" --images "${ENCODER_IMAGES:-8192}" \
    --max-batch 256 --clients 16 --files-per-request 32 --rounds 2 --text-queries 50 \
    --gpu-decode "$mode" --json "$out/encoder-$mode.json"
done

want host && step host "${HOST_LIMIT:-90}" "$py" bench/bench_host.py --images "${HOST_IMAGES:-16384}" \
  --rounds 2 --clients 16 --files-per-request 32

want ingest && step ingest "${INGEST_LIMIT:-150}" env ENCODER_MAX_BATCH=256 "$py" bench/bench_ingest.py \
  --model "$model" --n "${INGEST_N:-6000}" --batch-size 32 --concurrency 16 --quiet

want search-tiny && step search-tiny "${SEARCH_TINY_LIMIT:-150}" "$py" bench/bench_search.py --model glimpse-tiny \
  --requests "${SEARCH_TINY_REQUESTS:-1000}" --images 300 --json "$out/search-tiny.json"

want search && step search "${SEARCH_LIMIT:-150}" "$py" bench/bench_search.py --model "$model" \
  --requests "${SEARCH_REQUESTS:-200}" --images "${SEARCH_IMAGES:-500}" --json "$out/search.json"

# Side by side: raw forward and service (each round of bench_encoder), host ceiling, ingest.
{
  echo "== summary"
  for mode in ${GPU_BENCH_DECODE_MODES:-on off}; do
    grep -h "^round" "$out/encoder-$mode.log" 2>/dev/null | sed "s/^/encoder-$mode: /" | cut -c1-120
  done
  grep -h "^round" "$out/host.log" 2>/dev/null | sed "s/^/host: /"
  grep -hi "images/s" "$out/ingest.log" 2>/dev/null | tail -n 4 | sed "s/^/ingest: /"
} | tee "$out/summary.log"
