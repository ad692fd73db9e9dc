#!/usr/bin/env bash
# Rollout worker against local mode, peers in one run on one local cluster:
#   scripted, 64 episodes (16 tasks x G=4) with 64 in flight   (the figure)
#   scripted, the same 64 episodes with 4 in flight            (baseline)
#   moe,      64 episodes (16 tasks x G=4), 64 in flight, on the inference
#             core with random weights (2 turns of up to 32 tokens each)
# Prints each run's summary (JSON) and the concurrency speedup.
#   sudo bash bench/rollout_bench.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="$(cd "${1:-build}" && pwd)"
DATA_DIR="$(mktemp -d /tmp/dsec-rollout-bench.XXXXXX)"
trap 'rm -rf "$DATA_DIR"' EXIT
"$BUILD_DIR/bin/dsecctl" local up --port 0 --max_sandboxes 128 \
  --data_dir "$DATA_DIR/cluster" --run bash -c '
    set -e
    bin="$0"; out="$1"
    run() {
      name="$1"; shift
      "$bin/dsec-rollout" --num_tasks 16 --group 4 --json --out "$out/$name" "$@" \
        > "$out/$name.json"
      echo "== $name"; cat "$out/$name.json"
    }
    run scripted-64 --policy scripted --concurrency 64
    run scripted-4 --policy scripted --concurrency 4
    run moe-64 --policy moe --concurrency 64 --max_steps 2 --max_new_tokens 32
    python3 - "$out" <<EOF
import json, sys
d = sys.argv[1]
a = json.load(open(d + "/scripted-64.json"))
b = json.load(open(d + "/scripted-4.json"))
m = json.load(open(d + "/moe-64.json"))
print()
print("| run | episodes | reward mean | pass@1 | pass@4 | actions/s | tokens/s | policy share | wall s |")
print("|---|---|---|---|---|---|---|---|---|")
for name, s in (("scripted, 64 in flight", a), ("scripted, 4 in flight", b), ("moe, 64 in flight", m)):
    print("| %s | %d | %.3f | %.3f | %.3f | %.1f | %.0f | %.1f%% | %.1f |" % (
        name, s["episodes"], s["reward_mean"], s["pass_at_1"], s["pass_at_4"],
        s["actions_per_s"], s["tokens_per_s"], 100 * s["policy_share"], s["wall_s"]))
print()
print("moe prompt tokens: %d, prefilled %d, copied from a shared prefix %d" % (m["prompt_tokens"], m["prefill_tokens"], m["shared_prefix_tokens"]))
print("concurrency speedup (64 vs 4 in flight, actions/s): %.2fx" % (a["actions_per_s"] / b["actions_per_s"]))
EOF
  ' "$BUILD_DIR/bin" "$DATA_DIR"
