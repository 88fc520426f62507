set -u
. bench/device_env.sh
CFG=configs/bench/ddp_reconstruction.yaml
timeout 200 python -m tools.fit -c $CFG --trainer.devices 2 --data.init_args.batch_size 4 --run.run gpu2_seed1 --trainer.max_steps 150 --data.init_args.seed 1 > $OUT/gpu2_seed1.log 2>&1; echo "gpu2_seed1 rc=$?"
timeout 150 python -m tools.fit -c $CFG --trainer.devices 1 --data.init_args.batch_size 8 --run.run gpu1_seed2 --trainer.max_steps 150 --data.init_args.seed 2 > $OUT/gpu1_seed2.log 2>&1; echo "gpu1_seed2 rc=$?"
python -m bench.ddp_report runs/bench_ddp/gpu1_seed2 runs/bench_ddp/gpu2_seed1 | tee $OUT/report2.jsonl
tar czf $OUT/csv.tgz runs/bench_ddp/*/logs/csv/*/metrics.csv runs/bench_ddp/*/logs/csv/metrics.csv 2>/dev/null; ls -la $OUT
