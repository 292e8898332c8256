#!/usr/bin/env bash
# The test command: installs what is missing, builds everything, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
start=$(date +%s)
bash deploy/build.sh
echo "test.sh: build took $(( $(date +%s) - start )) s"
# install-deps.sh installed the datasets, so a test that finds one missing fails, not skips.
ADAPTD_REQUIRE_DATA=1 ctest --test-dir build --output-on-failure -j "${ADAPTD_JOBS:-$(nproc)}" --timeout 900
