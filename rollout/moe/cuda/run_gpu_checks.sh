#!/usr/bin/env bash
# GPU checks of the CUDA MoE layers, for a machine with an NVIDIA GPU and
# nvcc: configures a fresh build directory, builds only moe_cuda_test and
# moe_bench, runs the test with DSEC_REQUIRE_GPU=1 (a missing device fails)
# and the bench's CUDA rows (fp32 and bf16). Logs go to $OUT (if set) or to
# the build directory. Budget: well under 8 minutes on 16 cores.
#
#   rollout/moe/cuda/run_gpu_checks.sh [build-dir]   (default build-gpu)
set -uo pipefail
cd "$(dirname "$0")/../../.."
BUILD=${1:-build-gpu}
LOGS=${OUT:-$BUILD/gpu-logs}
JOBS=${JOBS:-16}
mkdir -p "$LOGS"
export PATH="$PATH:/usr/local/cuda/bin"
status=0

step() { echo "== $*" | tee -a "$LOGS/summary.txt"; }

step "$(date -u +%FT%TZ) nvidia-smi"
nvidia-smi >"$LOGS/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" | tee -a "$LOGS/summary.txt"
head -15 "$LOGS/nvidia-smi.txt"

step "configure $BUILD"
start=$(date +%s)
if ! cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DDSEC_ENABLE_CUDA=ON >"$LOGS/configure.txt" 2>&1; then
  tail -30 "$LOGS/configure.txt"; step "configure FAILED"; exit 1
fi
grep "dsec: " "$LOGS/configure.txt" | tee -a "$LOGS/summary.txt"

step "build moe_cuda_test moe_bench (-j$JOBS)"
if ! timeout 300 ninja -C "$BUILD" -j"$JOBS" moe_cuda_test moe_bench \
    >"$LOGS/build.txt" 2>&1; then
  tail -40 "$LOGS/build.txt"; step "build FAILED"; exit 1
fi
step "configure+build took $(( $(date +%s) - start ))s"

step "moe_cuda_test (DSEC_REQUIRE_GPU=1)"
DSEC_REQUIRE_GPU=1 timeout 240 "$BUILD/rollout/moe/cuda/moe_cuda_test" \
    >"$LOGS/moe_cuda_test.txt" 2>&1
rc=$?
grep -E "^\[  (PASSED|FAILED|SKIPPED) |FAILED TEST|Failure|got .* want" \
    "$LOGS/moe_cuda_test.txt" | head -40 | tee -a "$LOGS/summary.txt"
step "moe_cuda_test rc=$rc"
[ $rc -eq 0 ] || status=1

for dtype in fp32 bf16; do
  step "moe_bench CUDA rows ($dtype)"
  timeout 120 "$BUILD/bench/moe_bench" --cpu=false --dtype=$dtype \
      --batches 1,8,64,512,4096 --min_ms 200 \
      >"$LOGS/moe_bench_cuda_$dtype.txt" 2>&1
  rc=$?
  tee -a "$LOGS/summary.txt" <"$LOGS/moe_bench_cuda_$dtype.txt"
  step "moe_bench $dtype rc=$rc"
  [ $rc -eq 0 ] || status=1
done

step "done, status=$status (logs in $LOGS)"
exit $status
