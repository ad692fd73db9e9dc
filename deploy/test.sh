#!/usr/bin/env bash
# Installs dependencies, builds everything and runs the whole test suite.
# Usage: bash deploy/test.sh   (as root: sandbox and FUSE tests need it)
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
BUILD_DIR="${BUILD_DIR:-build}"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$BUILD_DIR" -j "$(nproc)"
# GPU tests (label gpu) need a CUDA device; run them on one with
# rollout/moe/cuda/run_gpu_checks.sh.
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)" -LE gpu "$@"
