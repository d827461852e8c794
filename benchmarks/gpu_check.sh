#!/usr/bin/env bash
# One short session on a GPU machine (torch + timm preinstalled, no internet): the GPU tests, the prefix-cache
# benchmark on ResNet-50 at 224 px (bf16), and fractional-GPU packing with plain processes.
# Usage (from the repo root): OUT=/some/dir bash benchmarks/gpu_check.sh   (.gpuwheels/ holds a pytest wheel)
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/autosub-gpu}; mkdir -p "$OUT"
python -c "import pytest" 2>/dev/null || pip install -q --no-index --find-links .gpuwheels pytest >/dev/null 2>&1
nvidia-smi -L
timeout 90 python -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -5 | tee "$OUT/pytest_gpu.log"
timeout 100 python benchmarks/gpu_packing.py --engine processes --quick --out "$OUT/gpu_packing.json" 2>&1 | tail -7
timeout 150 python benchmarks/bench_cache.py --models resnet50 --image-size 224 --examples 1280 --epochs 2 \
  --batch-size 256 --out "$OUT/cache_gpu.json" 2>&1 | tail -24
timeout 300 python benchmarks/gpu_multitask.py --quick --out "$OUT/multitask_gpu.json" 2>&1 | tail -12
