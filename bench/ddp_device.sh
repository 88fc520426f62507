#!/usr/bin/env bash
# The DDP scaling run on a 2-GPU machine (docs/benchmarks.md "DDP"): one GPU at batch 8, the same with another data
# seed (the yardstick for "loss curves agree within noise"), two GPUs at 4 each (same global batch), the report,
# then a resume of the two-GPU run (from the last.ckpt written at max_steps) 30 steps further.
# Needs bench_data/mouse256 (configs/bench/ddp_reconstruction.yaml says how to make it) and, on a machine without
# the extra packages, .whl/ (README "GPU machines without internet"). Writes to ${OUT:-runs/bench_ddp_out}.
set -u
OUT=${OUT:-runs/bench_ddp_out}
mkdir -p "$OUT"
. bench/device_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
CFG=configs/bench/ddp_reconstruction.yaml
STEPS=${STEPS:-150}
timeout 220 python -m tools.fit -c $CFG --trainer.devices 1 --data.init_args.batch_size 8 --run.run gpu1 \
    --trainer.max_steps "$STEPS" > "$OUT/gpu1.log" 2>&1; echo "gpu1 rc=$?"
timeout 220 python -m tools.fit -c $CFG --trainer.devices 1 --data.init_args.batch_size 8 --run.run gpu1_seed1 \
    --trainer.max_steps "$STEPS" --data.init_args.seed 1 > "$OUT/gpu1_seed1.log" 2>&1; echo "gpu1_seed1 rc=$?"
timeout 220 python -m tools.fit -c $CFG --trainer.devices 2 --data.init_args.batch_size 4 --run.run gpu2 \
    --trainer.max_steps "$STEPS" > "$OUT/gpu2.log" 2>&1; echo "gpu2 rc=$?"
python -m bench.ddp_report runs/bench_ddp/gpu1 runs/bench_ddp/gpu2 --control runs/bench_ddp/gpu1_seed1 \
    | tee "$OUT/ddp_report.jsonl"
timeout 120 python -m tools.fit -c $CFG --trainer.devices 2 --data.init_args.batch_size 4 --run.run gpu2 \
    --trainer.max_steps $((STEPS + 30)) --resume auto > "$OUT/gpu2_resume.log" 2>&1; echo "gpu2 resume rc=$?"
python -m bench.ddp_report runs/bench_ddp/gpu2 > "$OUT/ddp_report_resumed.jsonl" 2>&1
cp -r runs/bench_ddp/gpu1/logs "$OUT/gpu1_logs"; cp -r runs/bench_ddp/gpu2/logs "$OUT/gpu2_logs"
tail -n 3 "$OUT"/gpu*.log
