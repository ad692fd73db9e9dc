#!/usr/bin/env bash
# Installs every Debian 12 package dsec needs to build, test and run.
# Idempotent and non-interactive; run as root (or with sudo available).
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build pkg-config ccache git clang-format
  # RPC and serialization
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev
  # storage, FUSE, sandboxing
  zlib1g-dev librocksdb-dev libfuse3-dev fuse3 libseccomp-dev libcap-dev
  # chunk checksums: ISA-L's CRC32 (zlib's polynomial, ~5x faster)
  libisal-dev
  # crypto, logging, HTTP, JSON
  openssl libssl-dev libspdlog-dev libfmt-dev libcpp-httplib-dev nlohmann-json3-dev
  # reward evaluation: JUnit XML
  libpugixml-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  bubblewrap hyperfine iproute2 procps psmisc util-linux
  # workloads the dsec-fs tests run inside the mount; passthrough_ll's source
  # (libfuse3-dev examples) is the FUSE peer of the benchmarks
  tar make sqlite3 strace
  # python module
  pybind11-dev python3-dev python3-pytest
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
