# Device calls behind docs/results.md: bash bench/learning_device.sh PHASE, PHASE one of recipes | gslrm256 | ddp |
# diffusion | overfit (below), run from the checkout root on a host with two GPUs (gslrm256, and overfit without OV2,
# need one).
# Needs the wheels in .whl/ (README "GPU machines without internet") and, for the FaceLift overfit, FaceLift's
# sample data in .carry/facelift_sample (copied from ../shared/data/); results go to $OUT (default: ./out).
set -u
source bench/device_env.sh || exit 1
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}
mkdir -p "$OUT" ../shared/data
[ -e ../shared/data/facelift_sample ] || ln -sfn "$PWD/.carry/facelift_sample" ../shared/data/facelift_sample
python - <<'PY' || exit 1   # compile gsplat's kernels once, before the runs start in parallel
import torch
from datamodules.procedural import make_scenes
make_scenes([0], "mouse_oblique20_6view", 8, 64, device="cuda")
print("gsplat ready", torch.cuda.device_count(), "GPUs")
PY
so=$TORCH_EXTENSIONS_DIR/gsplat_cuda/gsplat_cuda.so
[ -f "$so" ] && cp "$so" "$OUT/" && ls -la "$OUT/gsplat_cuda.so"   # carry it as .carry/gsplat_cuda.so next time
fit() {  # fit GPU NAME ARGS...: one run in the background, its log in $OUT
  local gpu=$1 name=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpu python -m tools.fit "$@" --run.run "$name" > "$OUT/$name.log" 2>&1 &
}
pack() {  # logs (csv, images, throughput) of every run, no checkpoints
  tar czf "$OUT/runs_$1.tgz" $(find runs -path '*/logs/*' \( -name 'metrics.csv' -o -name '*.png' -o -name '*.json' \) \
      -not -name 'samples_rank*') $(find runs -maxdepth 4 -name 'eval*' -type d) 2>/dev/null
}
eval_overfit() {  # eval_overfit GPU RUN NAME [tools.evaluate options]: the FaceLift overfit RUN on held-out views
  local gpu=$1 run=$2 name=$3; shift 3
  CUDA_VISIBLE_DEVICES=$gpu timeout 60 python -m tools.evaluate --ckpt overfit=runs/recipes/$run/checkpoints/last.ckpt \
      --data configs/recipes/overfit_facelift_sample.yaml "$@" --out runs/eval_$name --device cuda --batches 4 \
      --batch-size 8 --grid-scenes 2 > "$OUT/eval_$name.log" 2>&1
}
PHASE=${1:-}
case "$PHASE" in
recipes)  # the 128 px GS-LRM recipe, its lr 1e-4 variant, the domain-gap pair (70/30 mixed, with and without the
  # augmentation), the FaceLift overfit and pixel diffusion: three trainings a GPU, 4.5 min; then the domain-gap table
  P=configs/recipes/gslrm_procedural_128.yaml T=00:00:04:30
  fit 0 gslrm_procedural_128 -c $P --trainer.max_time $T
  fit 0 domain_mixed -c $P --data configs/data/procedural_mixed_128.yaml --trainer.max_time $T
  fit 0 overfit_facelift_sample -c configs/recipes/overfit_facelift_sample.yaml --data.init_args.num_workers 10 \
      --trainer.max_time $T
  fit 1 domain_mixed_aug -c $P --data configs/data/procedural_mixed_128.yaml --data.init_args.augment null \
      --trainer.max_time $T
  fit 1 gslrm_procedural_128_lr1e-4 -c $P --model.init_args.lr 1.0e-4 --model.init_args.weight_decay 0 \
      --trainer.max_time $T
  fit 1 diffusion_pixel_procedural64 -c configs/recipes/diffusion_pixel_procedural64.yaml --trainer.max_time $T
  wait
  R=runs/recipes
  python -m tools.evaluate --ckpt clean=$R/gslrm_procedural_128/checkpoints/last.ckpt \
      --ckpt mixed=$R/domain_mixed/checkpoints/last.ckpt --ckpt mixed_aug=$R/domain_mixed_aug/checkpoints/last.ckpt \
      --ckpt clean_lr1e-4=$R/gslrm_procedural_128_lr1e-4/checkpoints/last.ckpt \
      --data clean=configs/data/procedural_clean_128.yaml --data realistic=configs/data/procedural_realistic_128.yaml \
      --out runs/eval_domain_gap --device cuda --batches 8 --batch-size 8 --grid-scenes 4 > "$OUT/eval.log" 2>&1
  cp "$OUT"/*.log runs/ 2>/dev/null
  tar czf "$OUT/recipes.tgz" runs/*.log $(find runs -path '*/logs/*' \( -name 'metrics.csv' -o -name '*.png' -o \
      -name 'throughput.json' \)) runs/eval_domain_gap
  ls -la "$OUT" ;;
gslrm256)  # the 256 px GS-LRM recipe alone on a GPU and its evaluation, then the gpu-marked tests there
  R=runs/recipes
  fit 0 gslrm_procedural_256 -c configs/recipes/gslrm_procedural_256.yaml --trainer.max_time 00:00:04:00
  wait; pack px256
  CUDA_VISIBLE_DEVICES=0 timeout 60 python -m tools.evaluate --ckpt px256=$R/gslrm_procedural_256/checkpoints/last.ckpt \
      --data configs/recipes/gslrm_procedural_256.yaml --out runs/eval_256 --device cuda --batches 8 \
      --batch-size 8 --grid-scenes 4 > "$OUT/eval_256.log" 2>&1
  CUDA_VISIBLE_DEVICES=0 timeout 150 python -m pytest -q -m gpu tests > "$OUT/pytest_gpu.log" 2>&1
  pack gslrm256 ;;
ddp)  # the 128 px recipe on 2 GPUs (same global batch), then its evaluation
  P=configs/recipes/gslrm_procedural_128.yaml
  python -m tools.fit -c $P --trainer.devices 2 --trainer.strategy ddp --data.init_args.batch_size 4 \
      --trainer.max_time 00:00:04:00 --run.run gslrm_procedural_128_ddp2 > "$OUT/gslrm_procedural_128_ddp2.log" 2>&1
  pack ddp2
  timeout 60 python -m tools.evaluate --ckpt ddp2=runs/recipes/gslrm_procedural_128_ddp2/checkpoints/last.ckpt \
      --data clean=configs/data/procedural_clean_128.yaml --out runs/eval_ddp2 --device cuda --batches 8 \
      --batch-size 8 --grid-scenes 4 > "$OUT/eval_ddp2.log" 2>&1
  pack ddp ;;
diffusion)  # the pixel-diffusion recipe on GPU 0 (PX: run name, PX_TIME: its max_time, PX_ARGS: overrides), its
  # evaluation (PX_EVAL: "DDIM_STEPS GUIDANCE") and a sampling sweep (SWEEP_ARGS, SWEEP_TIME; SWEEP=0: none); beside it
  # a FaceLift overfit variant on GPU 1 (OV: run name, OVERFIT_ARGS, OVERFIT_EVAL_ARGS) and its evaluation; the
  # gpu-marked tests on GPU 1 with GPU_TESTS=1
  R=runs/recipes PX=${PX:-px64} OV=${OV:-overfit_variant}
  fit 0 $PX -c configs/recipes/diffusion_pixel_procedural64.yaml --trainer.max_time ${PX_TIME:-00:00:06:30} ${PX_ARGS:-}
  PX64=$!
  fit 1 $OV -c configs/recipes/overfit_facelift_sample.yaml ${OVERFIT_ARGS:-}
  wait $!; pack overfit
  eval_overfit 1 $OV $OV ${OVERFIT_EVAL_ARGS:-}
  pack overfit
  [ -n "${GPU_TESTS:-}" ] && CUDA_VISIBLE_DEVICES=1 timeout 170 python -m pytest -q -m gpu tests > "$OUT/pytest_gpu.log" 2>&1 &
  wait $PX64; pack px64
  X=$(ls -d $R/$PX/export/step_* | sort -t_ -k3 -n | tail -1)
  set -- ${PX_EVAL:-25 1.5}
  CUDA_VISIBLE_DEVICES=0 timeout 60 python -m tools.evaluate --ckpt px64=$X --ema --data configs/data/procedural_heldout_64.yaml \
      --out runs/eval_$PX --device cuda --steps $1 --guidance $2 --batches 4 --batch-size 16 > "$OUT/eval_$PX.log" 2>&1
  pack px64
  [ "${SWEEP:-1}" = 0 ] || CUDA_VISIBLE_DEVICES=0 timeout ${SWEEP_TIME:-60} python bench/diffusion_sampling_sweep.py \
      --ckpt $R/$PX/checkpoints/last.ckpt --data configs/data/procedural_heldout_64.yaml --device cuda ${SWEEP_ARGS:-} \
      > "$OUT/sweep_$PX.jsonl" 2> "$OUT/sweep_$PX.err"
  wait
  pack diffusion ;;
overfit)  # the FaceLift overfit alone on GPU 0 (OV: run name, OVERFIT_ARGS) and, with OV2 set, a second variant
  # alone on GPU 1 (OVERFIT_ARGS2); then each one's evaluation with the recipe's inputs and with random inputs
  OV=${OV:-overfit_run}
  fit 0 $OV -c configs/recipes/overfit_facelift_sample.yaml ${OVERFIT_ARGS:-}
  [ -n "${OV2:-}" ] && fit 1 $OV2 -c configs/recipes/overfit_facelift_sample.yaml ${OVERFIT_ARGS2:-}
  wait; pack overfit
  # the evaluations on GPU 0, the gpu tests (GPU_TESTS=1) on GPU 1 meanwhile
  [ -n "${GPU_TESTS:-}" ] && CUDA_VISIBLE_DEVICES=1 timeout 170 python -m pytest -q -m gpu tests > "$OUT/pytest_gpu.log" 2>&1 &
  for RUN in $OV ${OV2:-}; do
    for MODE in spread random; do eval_overfit 0 $RUN ${RUN}_$MODE --input-views $MODE; done
  done
  wait
  pack overfit ;;
*) echo "usage: bash bench/learning_device.sh recipes|gslrm256|ddp|diffusion|overfit" ; exit 2 ;;
esac
