#!/usr/bin/env bash
# The main job: installs what is missing, builds, then runs the core demo: LeNet-5 learns
# Fashion-MNIST with IVON and reports accuracy and calibration at the posterior mean and under
# posterior averaging.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
bash deploy/build.sh
epochs="${ADAPTD_DEMO_EPOCHS:-10}"
echo
echo "== adaptd demo: IVON on Fashion-MNIST (LeNet-5, ${epochs} epochs) =="
./build/bench/train_fmnist --optimizers=ivon --epochs="$epochs" --eval_every=1 --eval_samples=64
cat <<'MSG'

Next: run the whole comparison (100 epochs, IVON against Adam) with
  ./build/bench/train_fmnist --epochs=100
or the step-time benchmark with
  ./build/bench/step_speed --benchmark_repetitions=15 --benchmark_enable_random_interleaving=true
Results and the commands behind them are in docs/benchmarks.md.
MSG
