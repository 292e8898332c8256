#!/usr/bin/env bash
# Configures and builds adaptd into ./build (Release, Ninja, ccache when present).
# Extra arguments go to cmake's configure step, e.g. -DADAPTD_WITH_SERVER=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${ADAPTD_JOBS:-$(nproc)}"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j "$jobs"
