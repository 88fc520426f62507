#!/usr/bin/env bash
# The single-GPU speed runs of docs/benchmarks.md in one device call (issues 4 and 5), then the gpu-marked tests.
# Each piece has its own time limit so a slow compile cannot starve the rest. Writes JSON lines to ${OUT:-runs/perf}.
set -u
OUT=${OUT:-runs/perf}
mkdir -p "$OUT"
. bench/device_env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
timeout 60 python bench/gslrm_block.py --backends cudnn,flash,efficient --no-compile | tee "$OUT/gslrm_block.jsonl"
timeout 90 python bench/gslrm_block.py --backends cudnn | tee -a "$OUT/gslrm_block.jsonl"
timeout 150 python bench/reconstruction_step.py --scale-bias -5.3 --attn-backend cudnn --compile \
    | tee "$OUT/reconstruction_step.jsonl"
timeout 100 python bench/diffusion_step.py --batches 1,2 --attention diffusers,sparse --grad-checkpointing off \
    --profile | tee "$OUT/diffusion_step.jsonl"
timeout 200 python -m pytest -q -m gpu tests/ 2>&1 | tail -n 15 | tee "$OUT/gpu_tests.txt"
timeout 150 python bench/diffusion_step.py --batches 2 --attention diffusers,sparse --grad-checkpointing off \
    --compile | tee -a "$OUT/diffusion_step.jsonl"
