#!/usr/bin/env bash
# The main job: installs what is missing, builds, starts the adaptd server on localhost with a
# local data directory, and runs the Split Fashion-MNIST continual-learning demo through the
# real client (adaptctl): five tasks streamed one after another, each adapted with the K-prior,
# then the accuracy matrix, forgetting, an uncertain and a confident prediction, and the
# training examples that most influence a test image.
#
# Environment: ADAPTD_DEMO_PER_TASK (training examples per task, default 2000),
# ADAPTD_DEMO_EPOCHS (default: the server's), ADAPTD_DATA_DIR (default: data/quickstart).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
bash deploy/build.sh

data_dir="${ADAPTD_DATA_DIR:-data/quickstart}"
mkdir -p "$data_dir"
log="$data_dir/adaptd.log"
./build/server/adaptd --data_dir="$data_dir" --port=0 --metrics_port=0 > "$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q "listening on" "$log" && break
  kill -0 "$server" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
target=$(sed -n 's/^adaptd listening on //p' "$log")
metrics=$(sed -n 's/^adaptd metrics on //p' "$log")
echo
echo "== adaptd is serving on $target (data in $data_dir, metrics at $metrics) =="
model="fmnist-$(date +%s)"
demo_flags=(--server="$target" --model="$model" --per_task="${ADAPTD_DEMO_PER_TASK:-2000}")
if [ -n "${ADAPTD_DEMO_EPOCHS:-}" ]; then demo_flags+=(--epochs="$ADAPTD_DEMO_EPOCHS"); fi
./build/client/adaptctl "${demo_flags[@]}" demo split-fmnist

cat <<MSG

== Going on ==
The server has stopped with this script; its data stays in $data_dir. Start it again with
  ./build/server/adaptd --data_dir=$data_dir --port=50051 --metrics_port=9090 &
and explore the model the demo left behind:
  ./build/client/adaptctl get $model
  ./build/client/adaptctl evaluate $model
  ./build/client/adaptctl memory-map $model --csv=memory.csv --svg=memory.svg
  ./build/client/adaptctl predict $model /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz --labels=/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz --task=4 --index=0 --count=1
(test image 0 is an ankle boot, one of task 4's classes: the demo's model has a head per task)
Stream your own data (IDX, CSV or NPY) with 'adaptctl stream', from Python with the package in
client/python (PYTHONPATH=build/python), and read docs/api.md for every RPC.
MSG
