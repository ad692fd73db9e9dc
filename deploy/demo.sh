#!/usr/bin/env bash
# Installs dependencies, builds dsec and runs the main job: a local
# single-node cluster (controller, agent and dsec-fs in one process, no
# outside service), a short demo against it (a job, a GRPO-style group of
# sandboxes, candidate solutions scored in each, an isolation check), then a
# real rollout: dsec-rollout runs GRPO groups of agentic episodes on the
# shipped task set (scripted policy: multi-step tool use with mistakes and
# fixes, scored by hidden tests; trajectory logs on dsec-fs) and a few on the
# MoE inference core, printing their summaries; then a clean stop. Last, a
# one-shot hostile run through dsec-run.
#   DEMO_COUNT=16 ROLLOUT_TASKS=8 ROLLOUT_GROUP=4 sudo bash deploy/demo.sh
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
  --port 0 --data_dir "$DATA_DIR/cluster" --run bash -c '
    set -e
    "$0/dsec-rollout" --policy scripted --num_tasks "$1" --group "$2" \
      --out "$3/rollout-scripted"
    echo
    echo "== the same path on the MoE inference core (random weights: noise text)"
    "$0/dsec-rollout" --policy moe --num_tasks 2 --group 2 --max_steps 2 \
      --max_new_tokens 48 --out "$3/rollout-moe"' \
  "$BUILD_DIR/bin" "${ROLLOUT_TASKS:-8}" "${ROLLOUT_GROUP:-4}" "$DATA_DIR"
echo
echo "== one-shot: a fork bomb meets the pids limit (dsec-run)"
"$BUILD_DIR/bin/dsec-run" --pids 32 --timeout 5s --json -- \
  bash -c 'exec 2>/dev/null; :(){ :|:& };:; sleep 1' || true
