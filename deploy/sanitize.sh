#!/usr/bin/env bash
# Builds the tests with AddressSanitizer and UndefinedBehaviorSanitizer into ./build-sanitize
# (benchmarks off) and runs every test there; the servers the integration tests start are the
# instrumented binary too. Any report fails the run: UBSan does not recover, and every process
# writes its reports under build-sanitize/reports, which must stay empty.
# About 10 minutes to build and 3 to test on 2 cores. LibTorch itself is not instrumented.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${ADAPTD_JOBS:-$(nproc)}"
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DADAPTD_BUILD_BENCH=OFF \
  -DADAPTD_MALLOC=system \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined"
cmake --build build-sanitize -j "$jobs"
reports="$PWD/build-sanitize/reports"
rm -rf "$reports" && mkdir -p "$reports"
# Leak checking is off: LibTorch's and gRPC's process-lifetime singletons read as leaks.
export ASAN_OPTIONS="detect_leaks=0:log_path=$reports/asan"
export UBSAN_OPTIONS="print_stacktrace=1:log_path=$reports/ubsan"
export ADAPTD_REQUIRE_DATA=1  # install-deps.sh installed the datasets
status=0
(cd build-sanitize && ctest -j "$jobs" --output-on-failure --timeout 600) || status=$?
if [ -n "$(ls -A "$reports")" ]; then
  echo "sanitize: reports in $reports:" >&2
  head -50 "$reports"/* >&2
  status=1
fi
exit "$status"
