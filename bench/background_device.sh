# Device call behind docs/results.md "White or random backgrounds for the GS-LRM": bash bench/background_device.sh
# (checkout root, GPU host, wheels in .whl/). Trains the Phases study's Phase-2 GS-LRM (configs/studies/phases/
# gslrm_phase2.yaml) over white backgrounds and over random ones (gslrm_phase2_random_bg.yaml), seeds 0 and 1, all
# four side by side on one GPU for T (default 2 min), then scores each on the study's 32 held-out scenes of seed 7:
# the photographed rig views into the model, realistic and clean photos, at the two held-out cameras (PSNR, PSNR fg,
# SSIM fg, IoU against the clean truth). SEEDS overrides "0 1". Results in $OUT: each run's metrics.csv (validation
# IoU shows a collapse: run F's white GS-LRM scored ~0.1) and each evaluation's results.json / .md.
set -u
source bench/device_env.sh || exit 1
export PYTHONUNBUFFERED=1
OUT=${OUT:-out} T=${T:-00:00:02:00} S=configs/studies/phases R=runs/background
mkdir -p "$OUT"
export MVLIFT_PRERENDER_CACHE=runs/prerender_cache   # the four runs render the same clean scenes once
for seed in ${SEEDS:-0 1}; do
  for bg in white random; do
    extra=(); [ $bg = random ] && extra=(-c $S/gslrm_phase2_random_bg.yaml)
    python -m tools.fit -c configs/recipes/gslrm_procedural_128.yaml -c $S/gslrm_phase2.yaml "${extra[@]}" \
        --seed_everything "$seed" --trainer.max_time "$T" --data.init_args.num_workers 3 \
        --run.root runs --run.experiment background --run.run "${bg}_s$seed" > "$OUT/fit_${bg}_s$seed.log" 2>&1 &
  done
done
wait
for log in "$OUT"/fit_*.log; do echo "$log: $(tail -n 1 "$log")"; done
for run in "$R"/*/; do
  name=$(basename "$run")
  cp "$(find "$run" -name metrics.csv | head -n 1)" "$OUT/metrics_$name.csv"
  python -m tools.evaluate --ckpt "$name=$run/checkpoints/last.ckpt" --input-views first --num-input-views 6 \
      --data realistic=$S/heldout_realistic.yaml --data clean=$S/heldout_clean.yaml --out "$OUT/eval_$name" \
      --device cuda --batches 2 --batch-size 16 --num-workers 2 --grid-scenes 3 > "$OUT/eval_$name.log" 2>&1 &
done
wait
python - "$OUT" <<'PY'  # one JSON line per run and data: the held-out cameras' scores
import json, sys
from pathlib import Path
for f in sorted(Path(sys.argv[1]).glob("eval_*/results.json")):
    for row in json.loads(f.read_text())["rows"]:
        m = row["heldout_metrics"]["all"]
        print(json.dumps({"run": row["checkpoint"], "data": row["data"], "scenes": row["scenes"],
                          **{k: round(m[k], 4) for k in ("psnr", "psnr_fg", "ssim_fg", "iou")}}))
PY
