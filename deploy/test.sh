#!/usr/bin/env bash
# The test command: installs what is missing, builds everything, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
start=$(date +%s)
bash deploy/build.sh
echo "test.sh: build took $(( $(date +%s) - start )) s"
ctest --test-dir build --output-on-failure -j "${ADAPTD_JOBS:-$(nproc)}" --timeout 900
