#!/usr/bin/env bash
# What `benchmarks/gpu_session.sh` needs on a GPU machine that has torch (and timm, transformers, safetensors,
# psutil, tqdm, yaml) but nothing else of ours, both git-ignored, about 55 MB with the tree (the limit is 64):
# - .whl/: wheels of the rest of what `benchmarks/bench_gpu.py` imports, for its Python (3.12 by default);
# - .gpu-shards/: a few 720p clips (Big Buck Bunny and textured synthetic ones) for the loader measurement.
# DeepSpeed is published as a source archive: built here as a pure-Python wheel, its ops compile just in time.
# The versions are the ones the CPU suite runs with (requirements.txt pins them through the venv).
# There: python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${PYVER:-3.12}"
DEST="${DEST:-.whl}"
PIP="${PIP:-.venv/bin/python -m pip}"
version() { $PIP show "$1" 2>/dev/null | awk '/^Version:/ {print $2}'; }
rm -rf "$DEST" && mkdir -p "$DEST"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo '/.whl/' >> .git/info/exclude; }

DS_BUILD_OPS=0 $PIP wheel -q --no-deps --no-build-isolation -w "$DEST" "deepspeed==$(version deepspeed)"

platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
for name in hjson pydantic pydantic_core annotated-types typing-inspection av webdataset braceexpand; do
  $PIP download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp "${platforms[@]}" \
    -d "$DEST" "$name==$(version "$name")"
done
du -ch "$DEST"/*.whl | tail -n 1
ls -1 "$DEST"

SHARDS="${SHARDS:-.gpu-shards}"
grep -qx "/$SHARDS/" .git/info/exclude || echo "/$SHARDS/" >> .git/info/exclude
rm -rf "$SHARDS" && mkdir -p "$SHARDS"
work="$(mktemp -d)"
(cd benchmarks && ../.venv/bin/python -c "
from pathlib import Path
from common import build_corpus_shards
print(build_corpus_shards(Path('$work'), 2, []))")
cp "$work"/shards/*.tar "$SHARDS"/ && rm -rf "$work"
du -ch "$SHARDS"/*.tar | tail -n 1
