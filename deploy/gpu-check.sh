#!/usr/bin/env bash
# The GPU check: builds core, its tests and the speed benchmarks against the LibTorch inside an
# installed CUDA PyTorch (no gRPC: ADAPTD_WITH_SERVER=OFF), runs every test (the CUDA ones
# included), the step-time benchmark and one continual-learning stream trained on the GPU and on
# the CPU, and prints a short table. `gpu-check.sh --tests-only` builds and runs the tests alone
# (a quick rerun after a fix).
#
# A GPU machine may be unable to install packages. Abseil, GoogleTest, Google Benchmark and
# zlib's headers then come from Debian's .deb files placed in .gpu/debs beforehand:
#   mkdir -p .gpu/debs && (cd .gpu/debs && apt-get download libabsl-dev libabsl20220623 \
#     libgtest-dev libgmock-dev libbenchmark-dev libbenchmark1debian zlib1g-dev)
# They are unpacked under .gpu/root, never into /. Fashion-MNIST's four files may be carried in
# .gpu/fashion-mnist too.
set -uo pipefail
cd "$(dirname "$0")/.."
tests_only=0
[ "${1:-}" = "--tests-only" ] && tests_only=1
out="${OUT:-build-gpu/out}"
mkdir -p "$out"
log="$out/gpu-check.log"
exec > >(tee "$log") 2>&1

step() { echo; echo "== $* =="; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
torch_prefix="${ADAPTD_TORCH_PREFIX:-$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')}"

prefix="$torch_prefix"
cmake_extra=()
if [ -d .gpu/debs ]; then
  step "unpacking carried Debian packages"
  root="$PWD/.gpu/root"
  mkdir -p "$root"
  for f in .gpu/debs/*.deb; do dpkg -x "$f" "$root"; done
  libdir="$root/usr/lib/x86_64-linux-gnu"
  # zlib1g-dev's libz.so points at Debian's runtime file name; use this machine's libz.so.1.
  sys_libz=$(ldconfig -p | awk '/libz\.so\.1 / && /x86-64/ && !f {print $NF; f=1}')
  ln -sf "$sys_libz" "$libdir/libz.so"
  prefix="$torch_prefix;$root/usr"
  cmake_extra+=(-DZLIB_INCLUDE_DIR="$root/usr/include" -DZLIB_LIBRARY="$libdir/libz.so")
  export LD_LIBRARY_PATH="$libdir:${LD_LIBRARY_PATH:-}"
fi

# Fashion-MNIST for the tests that need it, when carried in .gpu/fashion-mnist (the GPU machine
# has no Debian dataset package).
if [ -d .gpu/fashion-mnist ] && [ ! -e /usr/share/datasets/fashion-mnist ]; then
  mkdir -p /usr/share/datasets && cp -r .gpu/fashion-mnist /usr/share/datasets/fashion-mnist
fi

targets=(core_tests step_speed cl_bench)
[ "$tests_only" = 1 ] && targets=(core_tests)
step "configure and build (${targets[*]})"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
start=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DADAPTD_WITH_SERVER=OFF \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" "${cmake_extra[@]}" \
  || { echo "gpu-check: configure FAILED"; exit 1; }
cmake --build build-gpu -j "$(nproc)" --target "${targets[@]}" \
  || { echo "gpu-check: build FAILED"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"

step "core tests (CUDA tests run here)"
./build-gpu/tests/core_tests --gtest_brief=1 2>&1 | tail -n 40
tests_rc=${PIPESTATUS[0]}
./build-gpu/tests/core_tests --gtest_filter='*Cuda*' 2>&1 | grep -E '^\[ *(OK|FAILED|SKIPPED|PASSED) '

if [ "$tests_only" = 1 ]; then
  echo "gpu-check: core_tests exit code $tests_rc"
  exit "$tests_rc"
fi

step "step time on the GPU (median of 10, interleaved)"
./build-gpu/bench/step_speed --device=cuda --benchmark_repetitions=10 \
  --benchmark_enable_random_interleaving=true --benchmark_report_aggregates_only=true \
  --benchmark_out="$out/step_speed_cuda.json" --benchmark_out_format=json 2>&1 | tail -n 30

step "step time on this machine's CPU (median of 5)"
./build-gpu/bench/step_speed --device=cpu --threads="$(nproc)" --benchmark_repetitions=5 \
  --benchmark_enable_random_interleaving=true --benchmark_report_aggregates_only=true 2>&1 | tail -n 8

step "Split CIL, K-prior, seed 10: Adapt on the GPU, then on one CPU thread"
stream_rc=0
for dev in cuda cpu; do
  timeout 200 ./build-gpu/bench/cl_bench --benchmark=split-fmnist-cil --method=kprior --seeds=1 \
    --first_seed=10 --threads=1 --device=$dev --json="$out/cl_cil_$dev.json" 2>&1 | tail -n 4
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "gpu-check: the $dev stream FAILED"; stream_rc=1; }
done

echo
echo "gpu-check: core_tests exit code $tests_rc, streams $stream_rc"
[ "$tests_rc" = 0 ] && exit "$stream_rc"
exit "$tests_rc"
