#!/usr/bin/env bash
# Installs dependencies, builds dsec and runs the main job.
# Until the local cluster exists (issue 4) the main job is a one-shot sandbox
# run through dsec-run; later issues replace it with `dsecctl local up` and a
# demo rollout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
BUILD_DIR="${BUILD_DIR:-build}"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$BUILD_DIR" -j "$(nproc)"
if [ -x "$BUILD_DIR/bin/dsec-run" ]; then
  echo "== hostile code in a sandbox: 256 MiB memory, 64 pids, 5 s timeout"
  "$BUILD_DIR/bin/dsec-run" --memory 256M --pids 64 --timeout 5s --json -- \
    python3 -c 'import os, socket; print("pid", os.getpid(), "uid", os.getuid(), "host", socket.gethostname()); print(os.listdir("/"))'
  echo "== a fork bomb meets the pids limit"
  "$BUILD_DIR/bin/dsec-run" --pids 32 --timeout 5s --json -- \
    bash -c ':(){ :|:& };:; sleep 1' || true
else
  echo "dsec-run not built yet; running the unit tests instead"
  ctest --test-dir "$BUILD_DIR" --output-on-failure
fi
