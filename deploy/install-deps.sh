#!/usr/bin/env bash
# Installs every Debian 12 package adaptd needs to build, test and run.
# Idempotent: packages already present are left alone. Uses sudo only when not root.
set -euo pipefail

PACKAGES=(
  # Toolchain.
  build-essential cmake ninja-build ccache pkg-config git
  # Core: LibTorch (CPU) and the OpenBLAS it must resolve to, Abseil.
  libtorch-dev libopenblas0-openmp libabsl-dev zlib1g-dev
  # Service: gRPC, Protobuf, SQLite, Prometheus, HTTP.
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libsqlite3-dev prometheus-cpp-dev libcpp-httplib-dev
  # The server binary's allocator.
  libjemalloc-dev
  # Tests and benchmarks.
  libgtest-dev libgmock-dev libbenchmark-dev
  # Data sets: Fashion-MNIST and scikit-learn's bundled sets.
  dataset-fashion-mnist python3-sklearn python3-numpy
  # Python client and its tests.
  python3-grpcio python3-protobuf python3-pytest python3-venv python3-wheel
  # The TLS test makes its certificates with openssl.
  openssl
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${#missing[@]} package(s): ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all ${#PACKAGES[@]} packages present"
fi

# LibTorch must resolve its BLAS to OpenBLAS: with the reference BLAS training runs ~10x slower.
# (awk reads to the end: an early exit would SIGPIPE the producer under pipefail.)
torch_cpu=$(ldconfig -p | awk '/libtorch_cpu\.so / && !f {print $NF; f=1}')
blas=""
if [ -n "$torch_cpu" ]; then
  blas=$(ldd "$torch_cpu" | awk '/libblas\.so/ && !f {print $3; f=1}')
  [ -n "$blas" ] && blas=$(readlink -f "$blas")
fi
if [[ "$blas" == *openblas* ]]; then
  echo "install-deps: LibTorch BLAS -> $blas (OpenBLAS, good)"
else
  cat >&2 <<MSG
install-deps: ********************************************************************
install-deps: WARNING: LibTorch resolves libblas.so.3 to '${blas:-nothing}', not OpenBLAS.
install-deps: Training will run about 10x slower. Fix it with:
install-deps:   $SUDO apt-get install libopenblas0-openmp
install-deps:   $SUDO update-alternatives --config libblas.so.3-$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
install-deps: ********************************************************************
MSG
fi
