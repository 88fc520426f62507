# The user's experiment plan (issue 29), Phases 1-3 on one GPU: bash bench/phases_device.sh STEP
# (run from the checkout root on the device machine; docs/results.md, "The user's experiment plan (Phases 1-3)").
#   train     diffusion start (5 min) beside the Phase-2 GS-LRM (5 min)                        ~8 min a call
#   finetune  rows (i) (ii) (iii) x seeds 0 1, all at once from the start (500 steps each, ~4.5 min); Phase-3
#             data (~4 samples/s for all sets together: 3 x 256 ~3.5 min; call finetune twice)  ~8 min
#   phase3    (Phase-3 data not yet written;) Phase-3 GS-LRMs (1000 steps) beside the Phase-2 evaluations;
#             Phase-3 evaluations, the baseline, the report                                     ~5-6 min
#   eval | report    every evaluation again / the report alone; all = train finetune phase3 (no call limit)
# The steps hand each other their runs in runs/ (checkpoints stay on the machine): call them one after the other on
# the same warm machine (it is given back 30 s after a call). The jobs share their GPU pre-renders on disk
# (runs/phases/prerender_cache, datamodules.render_cache; not packed): a later job or step reads them. Each step
# packs what it made, without checkpoints, into $OUT/phases_STEP.tgz: the runs' logs, the evaluations, the Phase-3
# data records, the jobs' logs and status and the report (runs/phases/out/); paths from the checkout root: tar xzf it there, then
#   python -m bench.phases_report --root runs --out docs/results/phases
# $OUT also gets phases_status.jsonl (every job: command, exit code, seconds, startup_s), the report's phases.md (phase3, eval,
# report), gsplat_cuda.so and preflight.log (the gpu tests run first: a failure stops the call before any training).
# Needs the wheels in .whl/ (README "GPU machines without internet"), as bench/learning_device.sh; gsplat's kernels
# compile once (~90 s) unless .carry/gsplat_cuda.so is carried (copied to $OUT for the next call).
# Times, steps and seeds: PHASES_BASE_TIME, PHASES_GSLRM_TIME, PHASES_FINETUNE_TIME, PHASES_PHASE3_TIME (dd:hh:mm:ss;
# the rows' times only bound their steps), PHASES_FINETUNE_STEPS (500), PHASES_PHASE3_STEPS (1000), PHASES_SEEDS
# ("0 1"), PHASES_PHASE3_SEEDS ("0"), PHASES_EVAL_BATCHES (4 x 16 held-out scenes), PHASES_ROWS (the rows trained:
# "i ii iii") (bench/phases.py). A step repeated skips trainings with an export and evaluations with results: e.g.
# PHASES_PHASE3_SEEDS=1 ... phase3 adds Phase 3's second seed.
set -u
T0=$SECONDS
STEP=${1:-}
case "$STEP" in
train|finetune|phase3|eval|report|all) ;;
*) echo "usage: bash bench/phases_device.sh train|finetune|phase3|eval|report|all" >&2; exit 2 ;;
esac
source bench/device_env.sh || exit 1
export PYTHONUNBUFFERED=1 DIFFUSERS_VERBOSITY=error TRANSFORMERS_VERBOSITY=error
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}  # six runs share one GPU
DEADLINE=${PHASES_DEADLINE:-570}  # s after the script's start: the jobs are stopped then (SIGTERM: bench/phases.py
                                  # ends and records them), so that packing still runs inside a 600 s call
OUT=${OUT:-out}
mkdir -p "$OUT"
python - <<'PY' || exit 1   # compile gsplat's kernels once, before the runs start in parallel
import torch
from datamodules.procedural import make_scenes
make_scenes([0], "mouse_oblique20_6view", 8, 64, device="cuda")
print("gsplat ready", torch.cuda.device_count(), "GPU:", torch.cuda.get_device_name(0))
from importlib import metadata  # the versions a run's numbers come from (docs/benchmarks.md)
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"
print("versions: torch", torch.__version__, "cuda", torch.version.cuda,
      *(f"{p} {version(p)}" for p in ("lightning", "diffusers", "kornia", "gsplat", "jsonargparse")))
PY
so=$TORCH_EXTENSIONS_DIR/gsplat_cuda/gsplat_cuda.so
[ -f "$so" ] && cp "$so" "$OUT/" && ls -la "$OUT/gsplat_cuda.so"   # carry it as .carry/gsplat_cuda.so next time
# preflight (~30 s; PHASES_PREFLIGHT=0 skips it): gsplat must render as the torch reference, forward and gradients,
# or nothing trains; then a tiny GS-LRM learning one scene on gsplat under bf16 (run F's Phase-2 GS-LRM painted every
# view white on this path) is reported, not required: its thresholds were set on a CPU in fp32
if [ "${PHASES_PREFLIGHT:-1}" != 0 ] && [ "$STEP" != report ]; then
  if ! timeout 120 python -m pytest -q -p no:cacheprovider -m gpu tests/test_gaussians_gpu.py \
      > "$OUT/preflight.log" 2>&1; then
    tail -n 30 "$OUT/preflight.log"
    echo "phases_device.sh $STEP: gsplat does not render as the torch reference ($OUT/preflight.log); nothing" \
      "was trained" >&2
    exit 3
  fi
  timeout 120 python -m pytest -q -s -p no:cacheprovider -m gpu tests/test_reconstruction_overfit.py \
    >> "$OUT/preflight.log" 2>&1 || echo "phases_device.sh: WARNING the tiny GS-LRM did not learn on gsplat under bf16"
  grep -E "PSNR after|IoU after|passed|failed" "$OUT/preflight.log"
fi
PHASES_OUT=runs/phases/out   # the jobs' logs, status and the report (kept on the machine between the steps)
pack() {  # run logs (csv, images, throughput), evaluations, Phase-3 data records, PHASES_OUT; no checkpoints
  tar czf "$OUT/phases_$1.tgz" $(find runs/phases -path '*/logs/*' \( -name 'metrics.csv' -o -name '*.png' -o \
      -name '*.json' \) -not -name 'samples_rank*' 2>/dev/null) $(find runs/phases -maxdepth 2 -path '*/eval/*' \
      -type d 2>/dev/null) $(find runs/phases/phase3_data -maxdepth 2 \( -name 'dataset.json' -o -name '*.yaml' \) \
      2>/dev/null) $(find runs/phases -maxdepth 2 -name 'config.yaml' 2>/dev/null) "$PHASES_OUT" 2>/dev/null
  ls -la "$OUT/phases_$1.tgz"
  cp "$PHASES_OUT/phases_status.jsonl" "$OUT/" 2>/dev/null
  cp "$PHASES_OUT/report/phases.md" "$OUT/" 2>/dev/null
  return 0
}
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
LEFT=$((DEADLINE - (SECONDS - T0)))
[ "$LEFT" -lt 60 ] && LEFT=60
# --foreground: the SIGTERM goes to bench.phases alone, which passes it to each training's main process; Lightning
# stops at the end of the step and last.ckpt is written there (callbacks.paths), so a repeated step continues it. (A
# signal to the whole process group would kill the loader workers first and crash the trainings instead.)
timeout --foreground -k 30 "$LEFT" python -m bench.phases "$STEP" --profile gpu --root runs --out "$PHASES_OUT"
rc=$?
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
pack "$STEP"
echo "phases_device.sh $STEP: exit $rc after $((SECONDS - T0)) s"
exit $rc
