#!/usr/bin/env bash
# The single-GPU speed runs of docs/benchmarks.md (issues 4 and 5) and the gpu-marked tests, in two device calls
# (each under the 10-minute limit):
#   bash bench/perf_device.sh reconstruction   # gpu tests (they build gsplat, ~100 s), gslrm_block, reconstruction_step
#   bash bench/perf_device.sh diffusion        # diffusion_step, ours (sparse) against diffusers' UNet timed in
#                                              # turns in one process (--interleave): eager at batch 1 and 2, then
#                                              # compiled at batch 2 (two full-UNet compiles, ~5 min), kernel profile
# Each piece has its own time limit so a slow compile cannot starve the rest. JSON lines go to ${OUT:-runs/perf}.
set -u
PART=${1:-reconstruction}
OUT=${OUT:-runs/perf}
mkdir -p "$OUT"
. bench/device_env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
case "$PART" in
reconstruction)
    timeout 250 python -m pytest -q -m gpu tests/ 2>&1 | tail -n 15 | tee "$OUT/gpu_tests.txt"
    timeout 60 python bench/gslrm_block.py --backends cudnn,flash,efficient --no-compile | tee "$OUT/gslrm_block.jsonl"
    timeout 90 python bench/gslrm_block.py --backends cudnn | tee -a "$OUT/gslrm_block.jsonl"
    timeout 150 python bench/reconstruction_step.py --scale-bias -5.3 --attn-backend cudnn --compile \
        | tee "$OUT/reconstruction_step.jsonl"
    timeout 60 python -m bench.augment_cost --device cuda --size 512 | tee "$OUT/augment_cost.jsonl"
    ;;
diffusion)
    for b in 1 2; do
        timeout 90 python bench/diffusion_step.py --batches $b --attention sparse,diffusers --grad-checkpointing off \
            --interleave --profile | tee -a "$OUT/diffusion_step.jsonl"
    done
    timeout 380 python bench/diffusion_step.py --batches 2 --attention sparse,diffusers --grad-checkpointing off \
        --compile --interleave --steps 8 --warmup 2 --profile | tee -a "$OUT/diffusion_step.jsonl"
    ;;
*) echo "usage: bash bench/perf_device.sh reconstruction|diffusion" >&2; exit 2 ;;
esac
