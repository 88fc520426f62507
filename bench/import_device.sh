# Device call behind docs/results.md "Geometry from real inputs": bash bench/import_device.sh (checkout root, GPU
# host, wheels in .whl/). Records and imports procedural mice through six lab cameras calibrated in mm
# (bench.import_recordings), trains the 128 px GS-LRM recipe on the imported frames and, beside it on the same GPU for
# the same time, on native procedural scenes; evaluates both on held-out mice (imported: the 2 cameras that are not
# inputs; native: the recipe's held-out scenes). T: the run length (default 4 min); GPU_TESTS=1 also runs the
# gpu-marked tests meanwhile; ALPHA=W trains, instead of the native run, a second imported run with the alpha loss
# (--model.init_args.opacity_weight W) and evaluates it on the imported held-out mice. Results in $OUT.
set -u
source bench/device_env.sh || exit 1
export PYTHONUNBUFFERED=1
OUT=${OUT:-out} T=${T:-00:00:04:00} P=configs/recipes/gslrm_procedural_128.yaml R=runs/recipes
mkdir -p "$OUT"
python -m bench.import_recordings --out runs/import_data --train ${TRAIN:-400} --heldout 40 --units mm --device cuda \
    --workers 14 > "$OUT/import_data.json" 2> "$OUT/import_data.err" || { tail -5 "$OUT/import_data.err"; exit 1; }
cat "$OUT/import_data.json"
so=$TORCH_EXTENSIONS_DIR/gsplat_cuda/gsplat_cuda.so
[ -f "$so" ] && cp "$so" "$OUT/"
python -m tools.fit -c $P --data configs/data/imported_mm_128.yaml --trainer.max_time $T --run.run imported_mm \
    > "$OUT/fit_imported.log" 2>&1 &
if [ -n "${ALPHA:-}" ]; then  # the alpha loss against the imported masks, beside the same run without it
    python -m tools.fit -c $P --data configs/data/imported_mm_128.yaml --trainer.max_time $T \
        --model.init_args.opacity_weight "$ALPHA" --run.run imported_mm_alpha > "$OUT/fit_alpha.log" 2>&1 &
    SECOND=(--ckpt "alpha=$R/imported_mm_alpha/checkpoints/last.ckpt") LOG2=$OUT/fit_alpha.log
else
    python -m tools.fit -c $P --trainer.max_time $T --run.run native_same_time > "$OUT/fit_native.log" 2>&1 &
    SECOND=(--ckpt "native=$R/native_same_time/checkpoints/last.ckpt" --data
            native=configs/data/procedural_clean_128.yaml) LOG2=$OUT/fit_native.log
fi
[ -n "${GPU_TESTS:-}" ] && timeout 200 python -m pytest -q -m gpu tests > "$OUT/pytest_gpu.log" 2>&1 &
wait
tail -3 "$OUT/fit_imported.log" "$LOG2"
timeout 120 python -m tools.evaluate --ckpt imported=$R/imported_mm/checkpoints/last.ckpt "${SECOND[@]}" \
    --data imported=configs/data/imported_mm_128.yaml --out runs/eval_imported --device cuda --batches 5 \
    --batch-size 8 --grid-scenes 3 > "$OUT/eval.log" 2>&1
tail -30 runs/eval_imported/results.md
tar czf "$OUT/imported.tgz" runs/eval_imported $(find runs/recipes -path '*/logs/*' \( -name 'metrics.csv' -o \
    -name '*.png' \)) runs/import_data/*/import_summary.json runs/import_data/heldout/frame_000000
