#!/usr/bin/env bash
# Installs dependencies, builds dsec and runs the main job: a local
# single-node cluster (controller + agent in one process, no outside
# service) and a short demo rollout against it: a job, a GRPO-style group of
# sandboxes, candidate solutions run and scored in each, an isolation check,
# then a clean stop. Then a one-shot hostile run through dsec-run.
#   DEMO_COUNT=16 sudo bash deploy/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
BUILD_DIR="${BUILD_DIR:-build}"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$BUILD_DIR" -j "$(nproc)"
DATA_DIR="$(mktemp -d /tmp/dsec-demo.XXXXXX)"
trap 'rm -rf "$DATA_DIR"' EXIT
echo "== dsec local cluster + demo rollout (data in $DATA_DIR)"
"$BUILD_DIR/bin/dsecctl" local up --demo --count "${DEMO_COUNT:-8}" \
  --port 0 --data_dir "$DATA_DIR"
echo
echo "== one-shot: a fork bomb meets the pids limit (dsec-run)"
"$BUILD_DIR/bin/dsec-run" --pids 32 --timeout 5s --json -- \
  bash -c 'exec 2>/dev/null; :(){ :|:& };:; sleep 1' || true
