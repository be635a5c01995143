#!/usr/bin/env bash
# Run on the GPU machine from the repo root, with .whl/ and .gpu-shards/ from gpu_prepare.sh carried along:
# installs the wheels beside the machine's torch, then runs bench_gpu.py into $OUT (or ./gpu-out).
# Extra arguments go to bench_gpu.py. Device tool: command `bash benchmarks/gpu_session.sh`, carry .whl and
# .gpu-shards, a timeout of 540 s (the script stops the benchmark at 480 s).
set -uo pipefail
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.csv"
python3 -c "import torch, deepspeed, av, webdataset; print(torch.__version__, deepspeed.__version__, av.__version__)"
timeout 480 python3 benchmarks/bench_gpu.py --shards .gpu-shards --out "$OUT" "$@" 2>&1 | tee "$OUT/bench_gpu.log"
