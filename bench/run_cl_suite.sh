#!/usr/bin/env bash
# Runs every continual-learning benchmark of docs/benchmarks.md: each method on each stream,
# 3 seeds, two processes at a time (one LibTorch thread each). Logs and JSON go to $1.
#   bash bench/run_cl_suite.sh results/cl
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-cl-results}"
mkdir -p "$out"
bench=./build/bench/cl_bench
run() {  # name, then cl_bench flags
  local name=$1; shift
  "$bench" --threads=1 --seeds=3 --json="$out/$name.json" "$@" > "$out/$name.log" 2>&1
  echo "$(date +%T) done $name: $(grep -E '^\| ' "$out/$name.log" | tail -n 1)"
}
lane1() {
  run permuted-joint --benchmark=permuted-fmnist --method=joint
  run permuted-kprior --benchmark=permuted-fmnist --method=kprior
  run permuted-ewc --benchmark=permuted-fmnist --method=ewc
  run permuted-ewc100 --benchmark=permuted-fmnist --method=ewc --ewc_lambda=100
  # digits-add takes seconds per seed and its 540-image test set is coarse: 10 seeds.
  run digits-joint --benchmark=digits-add --method=joint --seeds=10
  for f in 0.02 0.05 0.1; do
    run "digits-$f" --benchmark=digits-add --method=kprior,replay --memory_fraction=$f --seeds=10
  done
}
lane2() {
  run til --benchmark=split-fmnist-til --method=kprior,fromp,ewc,replay,finetune,joint
  run cil --benchmark=split-fmnist-cil --method=kprior,replay,fromp,ewc,finetune,joint
  run permuted-fromp --benchmark=permuted-fmnist --method=fromp
  run permuted-replay --benchmark=permuted-fmnist --method=replay
  run permuted-finetune --benchmark=permuted-fmnist --method=finetune
}
lane1 &
lane2 &
wait
