#!/usr/bin/env bash
# The DDP scaling run on a 2-GPU machine (docs/benchmarks.md "DDP"): one GPU at batch 8 with data seeds 0, 1, 2 (the
# 1-GPU runs among themselves are the yardstick for "loss curves agree within noise"), two GPUs at 4 each (the same
# global batch) with seeds 0 and 1, the report, then — when time is left — a resume of the 2-GPU run 30 steps
# further. Needs bench_data/mouse256 (configs/bench/ddp_reconstruction.yaml says how to make it) and, on a machine
# without the extra packages, .whl/ (README "GPU machines without internet"). Writes to ${OUT:-runs/bench_ddp_out}.
# Fits the device tool's 10-minute call: gsplat is built first, each run has its own limit.
set -u
START=$SECONDS
OUT=${OUT:-runs/bench_ddp_out}
mkdir -p "$OUT"
. bench/device_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
timeout 150 python -c "import gsplat.cuda._backend as b; print('gsplat built', b._C is not None)"
CFG=configs/bench/ddp_reconstruction.yaml
STEPS=${STEPS:-150}
fit() {  # name devices batch seed [extra...]
    local name=$1 dev=$2 bs=$3 seed=$4; shift 4
    timeout 110 python -m tools.fit -c $CFG --trainer.devices "$dev" --data.init_args.batch_size "$bs" \
        --run.run "$name" --trainer.max_steps "$STEPS" --data.init_args.seed "$seed" "$@" > "$OUT/$name.log" 2>&1
    echo "$name rc=$? at $((SECONDS - START)) s"
}
fit gpu1 1 8 0
fit gpu2 2 4 0
fit gpu1_seed1 1 8 1
fit gpu2_seed1 2 4 1
fit gpu1_seed2 1 8 2
R=runs/bench_ddp
python -m bench.ddp_report $R/gpu1 $R/gpu2 $R/gpu2_seed1 --control $R/gpu1_seed1 --control $R/gpu1_seed2 \
    | tee "$OUT/ddp_report.jsonl"
if (( SECONDS - START < 480 )); then
    timeout $((580 - SECONDS + START)) python -m tools.fit -c $CFG --trainer.devices 2 --data.init_args.batch_size 4 \
        --run.run gpu2 --trainer.max_steps $((STEPS + 30)) --resume auto > "$OUT/gpu2_resume.log" 2>&1
    echo "gpu2 resume rc=$?"
    python -m bench.ddp_report $R/gpu2 > "$OUT/ddp_report_resumed.jsonl" 2>&1
fi
for r in gpu1 gpu2; do cp -r $R/$r/logs "$OUT/${r}_logs"; done
tail -n 2 "$OUT"/gpu*.log
