#!/usr/bin/env bash
# The device check: one script for a lent GPU machine, run from the repository root.
# The machine has torch/timm but no internet: biovfm is installed without
# dependencies beside them, and the missing pure/binary wheels travel in .whl/
# (git-ignored; pass it to the device tool as carry [".whl"]). Fetch them first with
#   pip download -q --only-binary=:all: --python-version 3.12 --no-deps -d .whl \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux_2_17_x86_64 lightly albumentations albucore kornia \
#     kornia_rs pydicom nibabel pydantic pydantic_core annotated_types \
#     typing_inspection typing_extensions stringzilla simsimd
# (14 wheels, 21 MB; 3.12 is the device machine's Python). Each part is time-boxed;
# all of it can outlast one device call (600 s), so it runs in two halves:
#   bash benchmarks/gpu_check.sh 1   # MFU table, profile, reference comparisons, loader
#   bash benchmarks/gpu_check.sh 2   # train + torchrun on the GPU, compile, fp32, ViT-g
set -uo pipefail
PART=${1:-all}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . || exit 1
BIOVFM="python3 -m biovfm_core.cli.main"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, timm; from timm.layers import use_fused_attn; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'fused_attn', use_fused_attn())"
# Most wanted first: if the machine is taken back early, the MFU table and the
# profile are what the next session needs most.
bench="timeout 200 python3 benchmarks/bench_train_step.py --device cuda"
if [ "$PART" != 2 ]; then
echo "== train step, bf16 (MFU)"
$bench --backbones vit_small,vit_base,vit_large --batch-size 64 --steps 10 --warmup 3 | tee "$OUT/step_bf16.md"
echo "== profile, DINOv2 ViT-L"
timeout 120 python3 benchmarks/profile_step.py --device cuda --backbone vit_large --batch-size 64 \
  --trace "$OUT/profile_dinov2_vit_large.json" | tee "$OUT/profile_dinov2_vit_large.md"
gzip -f "$OUT/profile_dinov2_vit_large.json" 2>/dev/null
echo "== against the plain timm + lightly step, ViT-S/16"
timeout 150 python3 benchmarks/bench_vs_reference.py --device cuda --size 224 --local-size 96 \
  --local-crops 8 --prototypes 65536 --hidden 2048 --backbone vit_small --batch-size 64 | tee "$OUT/vs_reference.md"
timeout 240 python3 benchmarks/bench_vs_reference.py --device cuda --size 224 --local-size 96 \
  --local-crops 8 --prototypes 65536 --hidden 2048 --backbone vit_small --batch-size 64 \
  --reference plain --compile | tee "$OUT/vs_reference_plain.md"
echo "== loader"
timeout 90 python3 benchmarks/bench_loader.py --device cuda --workers 8 | tee "$OUT/loader.md"
fi
[ "$PART" = 1 ] && exit 0
echo "== biovfm train on the GPU (demo data, paper-scale DINOv2 ViT-S/16, bf16)"
timeout 150 $BIOVFM train --output /tmp/runs --name gpu --backbone vit_small --batch-size 64 \
  --max-steps 30 --set train.log_every=10 --set data.num_workers=8 \
  --set train.profile_steps=5 2>&1 | tail -8
cp /tmp/runs/gpu/metrics.csv "$OUT/train_metrics.csv" 2>/dev/null
cp /tmp/runs/gpu/summary.json "$OUT/train_summary.json" 2>/dev/null  # data_wait_fraction
cp /tmp/runs/gpu/profile/summary.md "$OUT/train_profile.md" 2>/dev/null
cp /tmp/runs/gpu/profile/trace.json.gz "$OUT/train_trace.json.gz" 2>/dev/null
echo "== torchrun, 1 GPU, MAE ViT-B"
timeout 120 torchrun --nproc_per_node 1 -m biovfm_core.cli.main train --objective mae \
  --backbone vit_base --batch-size 64 --max-steps 20 --output /tmp/runs --name ddp1 \
  --set train.log_every=10 --set data.num_workers=8 2>&1 | tail -5
echo "== train step, ViT-L, compiled blocks"
$bench --backbones vit_large --batch-size 64 --steps 10 --warmup 3 --compile | tee "$OUT/step_compile.md"
echo "== train step, fp32 ViT-L"
$bench --backbones vit_large --batch-size 64 --steps 4 --warmup 2 --precision fp32 | tee "$OUT/step_fp32.md"
echo "== train step, ViT-g/14"
$bench --backbones vit_giant --patch-size 14 --batch-size 32 --steps 4 --warmup 2 | tee "$OUT/step_giant.md"
