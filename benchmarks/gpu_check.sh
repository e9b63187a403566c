#!/usr/bin/env bash
# The device check: one script run on a lent GPU machine (see benchmarks/README.md).
# It installs biovfm without dependencies next to the machine's own torch/timm
# (lightly travels as a wheel in .whl/), then runs the CUDA path and the benchmarks.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'PY'
import torch, timm
from timm.layers import use_fused_attn
print(f"torch {torch.__version__} cuda {torch.version.cuda} timm {timm.__version__} fused_attn {use_fused_attn()}")
PY
bench="python3 benchmarks/bench_train_step.py --device cuda"
$bench --backbones vit_small,vit_base,vit_large --batch-size 64 --steps 10 --warmup 3 | tee "$OUT/step_bf16.md"
$bench --backbones vit_large --batch-size 64 --steps 5 --warmup 2 --precision fp32 | tee "$OUT/step_fp32.md"
$bench --backbones vit_large --batch-size 64 --steps 10 --warmup 3 --compile | tee "$OUT/step_compile.md"
$bench --backbones vit_giant --patch-size 14 --batch-size 32 --steps 5 --warmup 2 | tee "$OUT/step_giant.md"
