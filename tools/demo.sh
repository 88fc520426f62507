#!/usr/bin/env bash
# mvlift end-to-end demo on CPU (a few minutes on 2 cores): `make demo`, or
#   DEMO_OUT=demo_out PY=.venv/bin/python bash tools/demo.sh
#
# Rig reports -> a small synthesized mouse data set (+ rig check, shards, data inspection) -> the diffusion stage
# (pixel space, a small UNet fine-tuned from the shipped starting point, about 2.5 min) -> the reconstruction stage
# (a few steps) -> evaluation
# (GS-LRM alone on two rigs, and the chained pipeline) -> inference on one photo (views, gaussians.ply, turntable.gif)
# -> a summary.
# Everything is written under $DEMO_OUT (default: demo_out/ in the checkout), which is wiped first.
# The models are tiny and trained for seconds: the numbers show that the pipeline runs, not what it can reach.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO_OUT="${DEMO_OUT:-$ROOT/demo_out}"
PY="${PY:-$ROOT/.venv/bin/python}"
# relative paths are relative to where the script was started; make them absolute before moving to the checkout
case "$DEMO_OUT" in /*) ;; *) DEMO_OUT="$PWD/$DEMO_OUT" ;; esac
case "$PY" in /*) ;; */*) PY="$PWD/$PY" ;; esac
case "$DEMO_OUT" in /|"$ROOT"|"$ROOT"/) echo "demo.sh: refusing DEMO_OUT=$DEMO_OUT (it is wiped)" >&2; exit 2 ;; esac
cd "$ROOT"

RIG=mouse_oblique20_6view
DIFF_STEPS=120       # diffusion training steps (validation, checkpoint and export at the last one)
# where the diffusion stage starts (a path relative to the checkout): the demo's UNet trained 2.25 min on an H200 on
# procedural mice the demo never sees (tools/demo_assets/README.md); DIFF_INIT= (empty) trains it from scratch instead
# (blurred shapes in 120 CPU steps)
DIFF_INIT="${DIFF_INIT-tools/demo_assets/diffusion_pixel32}"
RECON_STEPS=100      # reconstruction training steps
# where the reconstruction stage starts: the demo's GS-LRM trained 25 min on 2 CPU cores on procedural mice the demo
# never sees (tools/demo_assets/README.md); RECON_INIT= (empty) trains it from scratch (a grey haze in 100 steps)
RECON_INIT="${RECON_INIT-tools/demo_assets/gslrm_demo64}"
# the starts are fine-tuned at lower learning rates than the configs' from-scratch ones (2e-3 / 1e-3 undo part of a
# start: docs/results.md)
DIFF_LR=2.0e-4
RECON_LR=2.0e-4
SAMPLE_STEPS=10      # sampling steps of the diffusion model in evaluation and inference
GUIDANCE=1.5         # its classifier-free guidance (the pixel recipe's best, docs/results.md; the tools' default is 3)
# quiet the "install accelerate" / torchvision notices of diffusers and transformers
export DIFFUSERS_VERBOSITY="${DIFFUSERS_VERBOSITY:-error}" TRANSFORMERS_VERBOSITY="${TRANSFORMERS_VERBOSITY:-error}"
export PYTHONUNBUFFERED=1

T0=$SECONDS
T_SECTION=$SECONDS
banner() {
    echo
    echo "=================================================================================================="
    echo "== $*"
    echo "==   (demo time so far: $((SECONDS - T0)) s; previous section: $((SECONDS - T_SECTION)) s)"
    echo "=================================================================================================="
    T_SECTION=$SECONDS
}
run() { echo "+ $*"; "$@"; }

rm -rf "$DEMO_OUT"
mkdir -p "$DEMO_OUT"
echo "mvlift demo: outputs in $DEMO_OUT, python $PY"
"$PY" -c "import torch, lightning, diffusers as d; print('torch', torch.__version__, '| lightning',
    lightning.__version__, '| diffusers', d.__version__, '| CUDA', torch.cuda.is_available())"

# ---------------------------------------------------------------------------------------------------------------
banner "1/7 Camera rigs: the mouse rig, and the camera-mismatch check against FaceLift's rig"
run "$PY" -m tools.rig show "$RIG"
echo
echo "+ $PY -m tools.rig compare facelift_6view $RIG    (exits 1 when the rigs differ: expected here)"
rc=0
"$PY" -m tools.rig compare facelift_6view "$RIG" || rc=$?
if [ "$rc" -eq 1 ]; then
    echo "-> camera mismatch detected (exit 1), as expected: FaceLift's rig is horizontal, the mouse rig sits at 20 deg."
else
    echo "demo.sh: tools.rig compare exited $rc (expected 1: the rigs differ)" >&2
    exit 1
fi

# ---------------------------------------------------------------------------------------------------------------
banner "2/7 Data: synthesize procedural mouse scenes, check their cameras, write shards, inspect data configs"
DATA="$DEMO_OUT/data"
run "$PY" -m tools.synthesize --out "$DATA/mouse_synth" --scenes 8 --views 6 --size 64 --rig "$RIG" --seed 0
run "$PY" -m tools.synthesize --out "$DATA/mouse_realistic" --scenes 4 --views 6 --size 64 --rig "$RIG" --seed 1 \
    --realistic
run "$PY" -m tools.rig check "$DATA/mouse_synth" --rig "$RIG"
run "$PY" -m tools.make_shards "$DATA/mouse_synth" "$DATA/mouse_synth_shards" --shard-size 4
echo
echo "-- configs/data/demo.yaml (procedural sources, what both demo stages train on): 200 draws"
run "$PY" -m tools.inspect_data -c configs/data/demo.yaml --samples 200 --json
echo
# the files just written, mixed 70/30: clean scenes from the shards, "realistic" ones from the FaceLift-layout folder
cat > "$DATA/files.yaml" <<EOF
# written by tools/demo.sh: the demo's synthesized files as a data config (shards 0.7 + FaceLift folders 0.3)
stage: diffusion
rig: $RIG
image_size: 64
sources:
  - {name: mouse_synth_shards, kind: synthetic, format: shards, urls: "$DATA/mouse_synth_shards", weight: 0.7,
     background: white}
  - {name: mouse_realistic, kind: synthetic, realistic: true, format: facelift,
     list_file: "$DATA/mouse_realistic/data_train.txt", weight: 0.3, background: white}
reference_view: random_rig
batch_size: 2
num_workers: 0
EOF
echo "-- $DATA/files.yaml (the shards + the realistic folder, diffusion stage): 200 draws"
run "$PY" -m tools.inspect_data -c "$DATA/files.yaml" --samples 200 --json
echo

# ---------------------------------------------------------------------------------------------------------------
fit_briefly() {  # fit_briefly CONFIG STEPS [ARGS...]: STEPS steps, validated, checkpointed and exported at the last one
  local cfg=$1 steps=$2; shift 2
  run "$PY" -m tools.fit -c "$cfg" --run.root "$RUNS" \
      --trainer.max_steps "$steps" --model.init_args.max_steps "$steps" \
      --trainer.val_check_interval "$steps" --checkpoint.every_n_train_steps "$steps" \
      --run.export_every_n_steps "$steps" "$@"
}

RUNS="$DEMO_OUT/runs"
DIFF_START=()
[ -n "$DIFF_INIT" ] && DIFF_START=(--model.init_args.pretrained "$DIFF_INIT" --model.init_args.lr "$DIFF_LR"
                                   --model.init_args.view_embeddings_path "$DIFF_INIT/view_embeddings.safetensors")
banner "3/7 Diffusion stage in pixel space (no VAE: a small UNet at 32 px), $DIFF_STEPS steps from ${DIFF_INIT:-scratch}"
fit_briefly configs/demo_diffusion.yaml "$DIFF_STEPS" "${DIFF_START[@]}"
DIFF_RUN="$RUNS/demo/diffusion"
DIFF_CKPT="$DIFF_RUN/checkpoints/last.ckpt"
DIFF_EXPORT="$(ls -d "$DIFF_RUN"/export/step_* | sort -V | tail -n 1)"

# ---------------------------------------------------------------------------------------------------------------
RECON_START=()
[ -n "$RECON_INIT" ] && RECON_START=(--model.init_args.init_from "$RECON_INIT" --model.init_args.lr "$RECON_LR")
banner "4/7 Reconstruction stage (GS-LRM): $RECON_STEPS training steps from ${RECON_INIT:-scratch}"
fit_briefly configs/demo_reconstruction.yaml "$RECON_STEPS" "${RECON_START[@]}"
RECON_RUN="$RUNS/demo/reconstruction"
RECON_CKPT="$RECON_RUN/checkpoints/last.ckpt"
RECON_EXPORT="$(ls -d "$RECON_RUN"/export/step_* | sort -V | tail -n 1)"

# ---------------------------------------------------------------------------------------------------------------
banner "5/7 Evaluation: the GS-LRM on the demo data seen through two rigs; the chained pipeline"
run "$PY" -m tools.evaluate --ckpt "demo_gslrm=$RECON_CKPT" --data configs/data/demo.yaml \
    --rig "$RIG" --rig facelift_6view --out "$DEMO_OUT/eval"
run "$PY" -m tools.evaluate --ckpt "demo_gslrm=$RECON_CKPT" --diffusion "demo_mvdiffusion=$DIFF_CKPT" \
    --data configs/data/demo.yaml --rig "$RIG" --steps "$SAMPLE_STEPS" --guidance "$GUIDANCE" \
    --out "$DEMO_OUT/eval_chained"

# ---------------------------------------------------------------------------------------------------------------
banner "6/7 Inference: photo -> 6 views -> Gaussians (.ply) -> turntable"
IMAGES=("$DATA/mouse_synth/sample_000000/images/cam_000.png")
EXAMPLE="$ROOT/../shared/data/facelift_sample/examples/000.png"   # only beside the project's own checkout
if [ -f "$EXAMPLE" ]; then
    echo "(also FaceLift's example photo $EXAMPLE: out of domain for a mouse model, it only shows an RGB photo's path)"
    IMAGES+=("$EXAMPLE")
fi
# the self-contained export folders (evaluation above read the .ckpt files: either works)
run "$PY" -m tools.infer "${IMAGES[@]}" --diffusion "$DIFF_EXPORT" --reconstruction "$RECON_EXPORT" \
    --out "$DEMO_OUT/infer" --steps "$SAMPLE_STEPS" --guidance "$GUIDANCE" --turntable-frames 24 --turntable-size 128

# ---------------------------------------------------------------------------------------------------------------
banner "7/7 Summary"
rel() { echo "${1#"$ROOT"/}"; }
echo "Data:"
echo "  synthesized scenes      $(rel "$DATA/mouse_synth") (8 clean), $(rel "$DATA/mouse_realistic") (4 realistic)"
echo "  shards                  $(rel "$DATA/mouse_synth_shards")/ ($(ls "$DATA/mouse_synth_shards" | wc -l | tr -d ' ') .tar)"
echo "  data config of them     $(rel "$DATA/files.yaml")"
echo "Diffusion stage (run $(rel "$DIFF_RUN")):"
echo "  checkpoint              $(rel "$DIFF_CKPT")"
echo "  export                  $(rel "$DIFF_EXPORT")/  (diffusers folders unet/ unet_ema/ image_encoder/ ...,"
echo "                          rig.json; no vae/: pixel space)"
echo "  validation grid         $(rel "$(ls "$DIFF_RUN"/logs/images/*.png | tail -n 1)")"
# did it learn more than its input? the generated novel views vs copying the reference into them (last validation)
echo "  last validation         $("$PY" - "$DIFF_RUN" <<'PYEOF'
import csv, glob, sys
rows = [r for f in sorted(glob.glob(sys.argv[1] + "/logs/csv/*/metrics.csv")) for r in csv.DictReader(open(f))]
last = [r for r in rows if r.get("val/gen_psnr")]
print("val/gen_psnr %.2f dB vs val/copy_ref_psnr %.2f dB (step %s)" % (
    float(last[-1]["val/gen_psnr"]), float(last[-1]["val/copy_ref_psnr"]), last[-1]["step"]) if last else "-")
PYEOF
)"
echo "Reconstruction stage (run $(rel "$RECON_RUN")):"
echo "  checkpoint              $(rel "$RECON_CKPT")"
echo "  export                  $(rel "$RECON_EXPORT")/  (model.safetensors, config.json, rig.json)"
echo "  validation grid         $(rel "$(ls "$RECON_RUN"/logs/images/*.png | tail -n 1)")"
echo "Evaluation:"
echo "  $(rel "$DEMO_OUT/eval")/results.{md,json,csv}, grids/: $(ls "$DEMO_OUT/eval/grids" | tr '\n' ' ')"
echo "  $(rel "$DEMO_OUT/eval_chained")/results.{md,json,csv}, grids/: $(ls "$DEMO_OUT/eval_chained/grids" | tr '\n' ' ')"
echo "Inference (one folder per image):"
for d in "$DEMO_OUT"/infer/*/; do
    d="${d%/}"
    echo "  $(rel "$d")/: gaussians.ply ($(du -k "$d/gaussians.ply" | cut -f1) KB), turntable.gif, views/ (6 PNG), cameras.json, input.png, info.json"
done
echo
echo "---- $(rel "$DEMO_OUT/eval/results.md") ----"
cat "$DEMO_OUT/eval/results.md"
echo
echo "---- $(rel "$DEMO_OUT/eval_chained/results.md") (first table) ----"
sed -n '1,/^## /p' "$DEMO_OUT/eval_chained/results.md" | sed '$d'
# every promised output exists
for f in "$DIFF_CKPT" "$RECON_CKPT" "$DIFF_EXPORT/rig.json" "$RECON_EXPORT/model.safetensors" \
         "$DEMO_OUT/eval/results.md" "$DEMO_OUT/eval_chained/results.md" \
         "$DEMO_OUT/infer/cam_000/gaussians.ply" "$DEMO_OUT/infer/cam_000/turntable.gif"; do
    [ -s "$f" ] || { echo "demo.sh: missing output $f" >&2; exit 1; }
done
echo "demo finished in $((SECONDS - T0)) s; outputs in $DEMO_OUT"
