#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600) of wall time, niced, on core 1, in parallel.
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(onnx graph_run safetensors npy idx plan_json pack model_file)
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" logs
  RUSTC_BOOTSTRAP=1 nice -n 19 taskset -c 1 cargo fuzz run -O "$t" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -artifact_prefix="artifacts/$t/" >"logs/$t.log" 2>&1 &
done
wait
