#!/usr/bin/env bash
# DDP on a 2-GPU machine (docs/benchmarks.md "DDP"), in one device call (10-minute limit; gsplat is built first,
# every run has its own limit). Needs bench_data/mouse256 (configs/bench/ddp_reconstruction.yaml says how to make
# it) and, on a machine without the extra packages, .whl/ (README "GPU machines without internet").
#
#   bash bench/ddp_device.sh scaling   # RUNS (default: all five) of 150 steps, the report, a resume if time is left
#   bash bench/ddp_device.sh profile   # 1 and 2 GPUs with callbacks.profile.ProfileSteps: GPU idle gaps per step
#
# Run names say the configuration: gpu<D>[_seed<S>] = D GPUs at a global batch of GLOBAL (default 8; GLOBAL/D per
# GPU), data seed S. GLOBAL=16 gives each rank twice the GPU work per step against the same host work.
# gpu1, gpu1_seed1, gpu1_seed2 (one GPU, three seeds) are the yardstick for "loss curves agree within noise";
# gpu2, gpu2_seed1 are compared with them. EXTRA="..." adds overrides to every run (e.g. the model's compile);
# TAG names the experiment (runs/bench_ddp$TAG); RESUME=0 skips the resume. Output: ${OUT:-runs/bench_ddp_out}.
# CFG=configs/bench/ddp_diffusion.yaml (with TAG=_diffusion) runs the same comparison for the diffusion stage.
set -u
START=$SECONDS
PART=${1:-scaling}
OUT=${OUT:-runs/bench_ddp_out}
TAG=${TAG:-}
R=runs/bench_ddp$TAG
mkdir -p "$OUT"
. bench/device_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
CFG=${CFG:-configs/bench/ddp_reconstruction.yaml}
if [[ $CFG == *reconstruction* ]]; then  # gsplat's first-use CUDA build, outside the runs' time limits
    timeout 150 python -c "import gsplat.cuda._backend as b; print('gsplat built', b._C is not None)"
fi
STEPS=${STEPS:-150}
fit() {  # name [overrides...]: devices and seed from the name
    local name=$1; shift
    local dev=${name#gpu}; dev=${dev%%_*}
    local seed=0; [[ $name == *_seed* ]] && seed=${name##*_seed}
    timeout ${LIMIT:-110} python -m tools.fit -c $CFG --run.experiment "bench_ddp$TAG" --run.run "$name" \
        --trainer.devices "$dev" --data.init_args.batch_size $((${GLOBAL:-8} / dev)) --data.init_args.seed "$seed" \
        --trainer.max_steps "$STEPS" ${EXTRA:-} "$@" > "$OUT/$name.log" 2>&1
    echo "$name rc=$? at $((SECONDS - START)) s"
}
case "$PART" in
scaling)
    RUNS=${RUNS:-gpu1 gpu2 gpu1_seed1 gpu2_seed1 gpu1_seed2}
    for r in $RUNS; do fit "$r"; done
    controls=""; twos=""
    for r in $RUNS; do
        [[ $r == gpu1_seed* ]] && controls="$controls --control $R/$r"
        [[ $r == gpu2* ]] && twos="$twos $R/$r"
    done
    python -m bench.ddp_report $R/gpu1 $twos $controls | tee "$OUT/ddp_report$TAG.jsonl"
    if [[ ${RESUME:-1} == 1 ]] && (( SECONDS - START < 480 )); then
        LIMIT=$((580 - SECONDS + START)) STEPS=$((STEPS + 30)) fit gpu2 --resume auto
        python -m bench.ddp_report $R/gpu2 > "$OUT/ddp_report_resumed$TAG.jsonl" 2>&1
    fi
    for r in gpu1 gpu2; do cp $R/$r/logs/throughput.json "$OUT/${r}${TAG}_throughput.json"; done
    ;;
profile)
    for r in gpu1 gpu2; do
        STEPS=${STEPS_PROFILE:-70} fit "$r" --trainer.callbacks+=callbacks.profile.ProfileSteps \
            --trainer.callbacks.start_step=$(( ${STEPS_PROFILE:-70} - 8 )) --trainer.callbacks.num_steps=3
        for g in $R/$r/logs/gpu_gaps_rank*.json; do
            python -c "import json,sys; d=json.load(open(sys.argv[1])); d.pop('gaps'); print(sys.argv[1], json.dumps(d))" "$g"
            cp "$g" "$OUT/${r}$TAG-$(basename "$g")"
        done
        cp $R/$r/logs/trace_rank0.json.gz "$OUT/${r}${TAG}_trace_rank0.json.gz" 2>/dev/null
    done
    ;;
*) echo "usage: bash bench/ddp_device.sh scaling|profile" >&2; exit 2 ;;
esac
tail -qn 1 "$OUT"/gpu*.log
